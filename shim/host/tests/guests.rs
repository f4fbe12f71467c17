//! Real guests (built from WAT by wa8s-test-components) run by the host: output, exit codes,
//! environment and filesystem grants, limits, and malformed inputs.

use std::time::Duration;

use anyhow::Result;
use wa8s_api::report::report;
use wa8s_host::{Capture, DirGrant, Error, ExitStatus, Grants, Kind, Program, Stdio};
use wa8s_test_components as guests;

mod common;
use common::{Ran, engine, run};

#[tokio::test]
async fn a_cli_component_writes_stdout_and_stderr_and_exits_zero() {
    let ran = run(guests::HELLO_COMPONENT, Grants::default()).await;
    assert_eq!(ran.status.expect("runs"), ExitStatus(0));
    assert_eq!(ran.stdout, "hello from wasm\n");
    assert_eq!(ran.stderr, "hello on stderr\n");
}

#[tokio::test]
async fn a_preview1_command_module_runs_too() {
    let program = Program::load(&engine(), guests::HELLO_CORE).expect("loads");
    assert_eq!(program.kind(), Kind::CoreCommand);
    let ran = run(guests::HELLO_CORE, Grants::default()).await;
    assert_eq!(ran.status.expect("runs"), ExitStatus(0));
    assert_eq!(ran.stdout, "hello from wasm\n");
}

#[tokio::test]
async fn exit_codes_reach_the_caller() {
    // A preview1 module keeps its exact code; the preview1 adapter inside a component can
    // only say "failed", which wasi:cli reports as 1.
    assert_eq!(
        run(guests::EXIT3_CORE, Grants::default())
            .await
            .status
            .expect("runs"),
        ExitStatus(3)
    );
    assert_eq!(
        run(guests::EXIT3_COMPONENT, Grants::default())
            .await
            .status
            .expect("runs"),
        ExitStatus(1)
    );
}

#[tokio::test]
async fn the_guest_sees_only_the_environment_it_is_given() {
    // SAFETY-free way to prove the host environment is not inherited: PATH and HOME exist
    // in every test process.
    assert!(std::env::var_os("PATH").is_some());
    let grants = Grants {
        env: vec![
            ("GREETING".into(), "hi".into()),
            ("ALLOWED_ORIGINS".into(), "*".into()),
        ],
        ..Grants::default()
    };
    for wasm in [guests::ENV_CORE, guests::ENV_COMPONENT] {
        let ran = run(wasm, grants.clone()).await;
        assert_eq!(ran.status.expect("runs"), ExitStatus(0));
        assert_eq!(ran.stdout, "GREETING=hi\nALLOWED_ORIGINS=*\n");
    }
}

fn probe(dir: Option<DirGrant>, op: &str, path: &str) -> Grants {
    Grants {
        args: vec!["fsprobe".into(), "3".into(), op.into(), path.into()],
        dirs: dir.into_iter().collect(),
        ..Grants::default()
    }
}

fn errno(ran: &Ran) -> u32 {
    ran.stdout
        .rsplit("errno=")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no errno in {:?}", ran.stdout))
}

#[tokio::test]
async fn a_granted_directory_is_readable_and_writable() -> Result<()> {
    let host = tempfile::tempdir()?;
    std::fs::write(host.path().join("greeting.txt"), "hello file\n")?;
    let grant = DirGrant {
        host: host.path().into(),
        guest: "/data".into(),
        read_only: false,
        max_bytes: None,
        bound_by_kernel: false,
    };
    for wasm in [guests::FSPROBE_CORE, guests::FSPROBE_COMPONENT] {
        let ran = run(wasm, probe(Some(grant.clone()), "r", "greeting.txt")).await;
        assert!(ran.stdout.starts_with("hello file\n"), "{:?}", ran.stdout);
        assert_eq!(errno(&ran), 0);
        let ran = run(wasm, probe(Some(grant.clone()), "w", "out.bin")).await;
        assert_eq!(errno(&ran), 0, "{}", ran.stdout);
        assert_eq!(
            std::fs::metadata(host.path().join("out.bin"))?.len(),
            1 << 20
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_read_only_directory_is_readable_and_refuses_writes() -> Result<()> {
    let host = tempfile::tempdir()?;
    std::fs::write(host.path().join("app.conf"), "mode=ro\n")?;
    let grant = DirGrant {
        host: host.path().into(),
        guest: "/config".into(),
        read_only: true,
        max_bytes: None,
        bound_by_kernel: false,
    };
    for wasm in [guests::FSPROBE_CORE, guests::FSPROBE_COMPONENT] {
        let ran = run(wasm, probe(Some(grant.clone()), "r", "app.conf")).await;
        assert!(ran.stdout.starts_with("mode=ro\n"), "{:?}", ran.stdout);
        let ran = run(wasm, probe(Some(grant.clone()), "w", "x.txt")).await;
        assert_ne!(errno(&ran), 0, "write to a read-only dir succeeded");
        assert!(!host.path().join("x.txt").exists());
    }
    Ok(())
}

#[tokio::test]
async fn nothing_outside_the_granted_directory_is_reachable() -> Result<()> {
    let host = tempfile::tempdir()?;
    let inner = host.path().join("granted");
    std::fs::create_dir(&inner)?;
    std::fs::write(host.path().join("secret.txt"), "outside\n")?;
    std::os::unix::fs::symlink("/etc/passwd", inner.join("passwd-link"))?;
    std::os::unix::fs::symlink("../secret.txt", inner.join("secret-link"))?;
    let grant = DirGrant {
        host: inner.clone(),
        guest: "/data".into(),
        read_only: false,
        max_bytes: None,
        bound_by_kernel: false,
    };
    for wasm in [guests::FSPROBE_CORE, guests::FSPROBE_COMPONENT] {
        for path in [
            "../secret.txt",
            "/etc/passwd",
            "passwd-link",
            "secret-link",
            "a/../../secret.txt",
        ] {
            let ran = run(wasm, probe(Some(grant.clone()), "r", path)).await;
            assert_ne!(errno(&ran), 0, "{path} was readable: {:?}", ran.stdout);
            assert!(
                !ran.stdout.contains("root:") && !ran.stdout.contains("outside"),
                "{path}: {:?}",
                ran.stdout
            );
        }
    }
    Ok(())
}

/// WASI's errno for "no space left on device".
const ENOSPC: u32 = 51;

#[tokio::test]
async fn writes_past_a_directory_bound_fail_with_enospc_and_freed_space_is_usable_again()
-> Result<()> {
    let host = tempfile::tempdir()?;
    let existing = host.path().join("existing.bin");
    std::fs::write(&existing, vec![7u8; 100 << 10])?;
    let out = host.path().join("out.bin");
    let bounded = |max: u64| DirGrant {
        host: host.path().into(),
        guest: "/tmp".into(),
        read_only: false,
        max_bytes: Some(max),
        bound_by_kernel: false,
    };
    // 100 KiB already there, so only 412 KiB of the 1 MiB the guest writes fit in 512 KiB.
    let ran = run(
        guests::FSPROBE_COMPONENT,
        probe(Some(bounded(512 << 10)), "w", "out.bin"),
    )
    .await;
    assert_eq!(errno(&ran), ENOSPC, "{}", ran.stdout);
    let written = std::fs::metadata(&out)?.len();
    assert!(
        written <= 412 << 10,
        "{written} bytes written past the bound"
    );
    assert!(
        written > 300 << 10,
        "only {written} bytes written: refused too early"
    );
    assert_eq!(
        std::fs::read(&existing)?.len(),
        100 << 10,
        "other files untouched"
    );

    // The bound counts what is there when the guest starts: with the other file gone, a
    // whole MiB fits a bound of 1 MiB and one block for its name (the guest truncates
    // out.bin first).
    std::fs::remove_file(&existing)?;
    let ran = run(
        guests::FSPROBE_COMPONENT,
        probe(Some(bounded((1 << 20) + 4096)), "w", "out.bin"),
    )
    .await;
    assert_eq!(errno(&ran), 0, "{}", ran.stdout);
    assert_eq!(std::fs::metadata(&out)?.len(), 1 << 20);
    Ok(())
}

/// WASI's errno for "cross-device link".
const EXDEV: u32 = 75;

/// A 64 KiB bound at /tmp (preopen 3) and, for the cross-directory bypasses, an unbounded
/// directory (preopen 4) holding a 1 MiB `big.bin`.
fn bypass(op: &str, bounded: &std::path::Path, other: &std::path::Path) -> Grants {
    let mut grants = probe(
        Some(DirGrant {
            host: bounded.into(),
            guest: "/tmp".into(),
            read_only: false,
            max_bytes: Some(64 << 10),
            bound_by_kernel: false,
        }),
        op,
        "big.bin",
    );
    grants.dirs.push(DirGrant {
        host: other.into(),
        guest: "/other".into(),
        read_only: false,
        max_bytes: None,
        bound_by_kernel: false,
    });
    grants
}

#[tokio::test]
async fn every_way_around_an_accounted_bound_ends_in_enospc_or_exdev() -> Result<()> {
    for (op, want, what) in [
        ("u", ENOSPC, "writing through a file unlinked while open"),
        ("d", ENOSPC, "nesting directories through their descriptors"),
        ("s", ENOSPC, "a flood of symlinks"),
        ("m", EXDEV, "moving a big file in from another preopen"),
        (
            "l",
            EXDEV,
            "hard-linking a big file in from another preopen",
        ),
    ] {
        let bounded = tempfile::tempdir()?;
        let other = tempfile::tempdir()?;
        std::fs::write(other.path().join("big.bin"), vec![1u8; 1 << 20])?;
        let ran = run(
            guests::FSPROBE_COMPONENT,
            bypass(op, bounded.path(), other.path()),
        )
        .await;
        assert_eq!(errno(&ran), want, "{what}: {}", ran.stdout);
        // Nothing past the bound reached the disk: what the directory holds, counted as
        // the bound counts it (a 4 KiB block per name), fits 64 KiB.
        let held = std::process::Command::new("du")
            .args(["-s", "--apparent-size", "-B1"])
            .arg(bounded.path())
            .output()?;
        let bytes: u64 = String::from_utf8_lossy(&held.stdout)
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX);
        assert!(
            bytes <= (64 << 10) + 4096,
            "{what}: {bytes} bytes in a 64 KiB bound"
        );
        assert!(
            other.path().join("big.bin").exists(),
            "{what}: the source stays"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_preview1_module_with_a_bounded_directory_is_refused_before_running() -> Result<()> {
    let host = tempfile::tempdir()?;
    let grant = DirGrant {
        host: host.path().into(),
        guest: "/tmp".into(),
        read_only: false,
        max_bytes: Some(1 << 20),
        bound_by_kernel: false,
    };
    let ran = run(guests::FSPROBE_CORE, probe(Some(grant), "w", "out.bin")).await;
    let err = ran.status.expect_err("refused");
    assert!(
        err.to_string()
            .contains("maxSize is enforced for components only"),
        "{err}"
    );
    assert!(!host.path().join("out.bin").exists());
    Ok(())
}

#[tokio::test]
async fn without_a_grant_there_is_no_filesystem_at_all() {
    for wasm in [guests::FSPROBE_CORE, guests::FSPROBE_COMPONENT] {
        let ran = run(wasm, probe(None, "r", "etc/passwd")).await;
        assert_ne!(errno(&ran), 0);
        assert!(!ran.stdout.contains("root:"));
    }
}

#[tokio::test]
async fn a_grant_of_a_missing_directory_is_refused_before_running() {
    let grant = DirGrant {
        host: "/nonexistent/wa8s".into(),
        guest: "/data".into(),
        read_only: true,
        max_bytes: None,
        bound_by_kernel: false,
    };
    let ran = run(guests::FSPROBE_COMPONENT, probe(Some(grant), "r", "x")).await;
    let err = ran.status.expect_err("refused");
    assert!(
        err.to_string()
            .contains("/nonexistent/wa8s is not a directory"),
        "{err}"
    );
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_its_deadline() {
    for wasm in [guests::LOOP_CORE, guests::LOOP_COMPONENT] {
        let mut grants = Grants::default();
        grants.limits.timeout = Some(Duration::from_millis(300));
        let err = run(wasm, grants).await.status.expect_err("interrupted");
        assert!(matches!(err, Error::Deadline(_)), "{err}");
        assert!(err.to_string().contains("deadline of 300ms"), "{err}");
    }
}

#[tokio::test]
async fn a_memory_bomb_is_capped() {
    for wasm in [guests::GROW_CORE, guests::GROW_COMPONENT] {
        let mut grants = Grants::default();
        grants.limits.memory_bytes = Some(16 << 20);
        let ran = run(wasm, grants).await;
        assert_eq!(ran.status.expect("exits"), ExitStatus(0));
        let mib: u32 = ran
            .stdout
            .trim()
            .strip_prefix("grow refused after ")
            .and_then(|s| s.strip_suffix(" MiB"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected output {:?}", ran.stdout));
        assert!(mib < 16, "grew {mib} MiB past a 16 MiB cap");
    }
}

#[tokio::test]
async fn many_memories_and_a_huge_table_are_bounded_together_not_each() {
    // Nine memories of 4 MiB each fit a 32 MiB bound one by one but not together; a table of
    // twenty million entries (160 MB of references) fits no bound at all.
    let memories: String = (0..8).map(|i| format!("(memory $m{i} 64)")).collect();
    let grants = || {
        let mut g = Grants::default();
        g.limits.memory_bytes = Some(32 << 20);
        g
    };
    let many = wat::parse_str(format!(
        r#"(module (memory (export "memory") 64) {memories} (func (export "_start")))"#
    ))
    .expect("wat");
    let err = run(&many, grants()).await.status.expect_err("refused");
    assert!(err.to_string().contains("memory"), "{err}");
    let table = wat::parse_str(
        r#"(module (memory (export "memory") 1) (table 20000000 funcref) (func (export "_start")))"#,
    )
    .expect("wat");
    let err = run(&table, grants()).await.status.expect_err("refused");
    assert!(err.to_string().contains("table"), "{err}");
    // Within the bound, the same shapes run.
    let fits = wat::parse_str(
        r#"(module (memory (export "memory") 64) (memory 64) (table 1000 funcref) (func (export "_start")))"#,
    )
    .expect("wat");
    assert_eq!(
        run(&fits, grants()).await.status.expect("runs"),
        ExitStatus(0)
    );
}

#[tokio::test]
async fn a_guest_stopped_at_its_memory_limit_is_reported_as_out_of_memory() {
    for wasm in [guests::HOG_CORE, guests::HOG_COMPONENT] {
        let mut grants = Grants::default();
        grants.limits.memory_bytes = Some(8 << 20);
        let err = run(wasm, grants).await.status.expect_err("stopped");
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err:?}");
        let text = report(&err);
        assert!(
            text.contains("ran out of memory") && text.contains("the limit is 8388608 bytes"),
            "{text}"
        );
        // The trap itself is still named.
        assert!(text.contains("unreachable"), "{text}");
    }
    // A trap with no refused growth says nothing about memory.
    let err = run(guests::RECURSE_COMPONENT, Grants::default())
        .await
        .status
        .expect_err("traps");
    assert!(matches!(err, Error::Trap(_)), "{err:?}");
    assert!(!report(&err).contains("memory"), "{err}");
}

#[tokio::test]
async fn unbounded_recursion_traps_with_stack_exhaustion() {
    for wasm in [guests::RECURSE_CORE, guests::RECURSE_COMPONENT] {
        let err = run(wasm, Grants::default())
            .await
            .status
            .expect_err("traps");
        assert!(report(&err).contains("call stack exhausted"), "{err:?}");
    }
}

fn load_err(bytes: &[u8]) -> Error {
    Program::load(&engine(), bytes).expect_err("refused")
}

#[test]
fn malformed_inputs_are_clear_errors() {
    assert!(matches!(load_err(b""), Error::Empty));
    let e = load_err(b"\x7fELF\x02\x01\x01\x00garbage");
    assert!(
        e.to_string()
            .contains("not a WebAssembly binary (it starts with bytes 7f 45 4c 46"),
        "{e}"
    );
    let truncated = &guests::HELLO_COMPONENT[..guests::HELLO_COMPONENT.len() / 2];
    assert!(
        matches!(load_err(truncated), Error::Invalid(_)),
        "{}",
        load_err(truncated)
    );
    let no_start = wat::parse_str("(module (memory (export \"memory\") 1))").expect("wat");
    assert!(matches!(load_err(&no_start), Error::NoStart));
    let odd_import =
        wat::parse_str(r#"(module (import "env" "host_magic" (func)) (func (export "_start")))"#)
            .expect("wat");
    assert_eq!(
        load_err(&odd_import).to_string(),
        Error::UnsatisfiedImport("env::host_magic".into()).to_string()
    );
}

#[test]
fn a_component_importing_an_interface_the_host_lacks_names_it() {
    let component = wat::parse_str(guests::NEEDS_KEYVALUE_WAT).expect("wat");
    let e = load_err(&component);
    assert!(
        e.to_string().starts_with(
            "component imports wasi:keyvalue/store@0.2.0-draft, which this host does not provide"
        ),
        "{e}"
    );
}

#[test]
fn a_component_without_a_known_export_says_what_it_exports() {
    let component = wat::parse_str(
        r#"(component
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func $f (canon lift (core func $i "f")))
             (export "do-something" (func $f)))"#,
    )
    .expect("wat");
    let e = load_err(&component);
    assert!(e.to_string().contains("its exports: do-something"), "{e}");
}

#[test]
fn random_bytes_never_panic() {
    // A deterministic xorshift stream: varied, reproducible garbage with and without a wasm
    // header.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..64 {
        let mut bytes: Vec<u8> = (0..(round * 37 + 8))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        if round % 2 == 0 {
            bytes[..8].copy_from_slice(b"\0asm\x01\0\0\0");
        }
        assert!(Program::load(&engine(), &bytes).is_err());
    }
}

#[tokio::test]
async fn a_precompiled_component_loads_and_behaves_like_the_original() -> Result<()> {
    let engine = engine();
    let native = engine.precompile(guests::HELLO_COMPONENT)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hello.cwasm");
    std::fs::write(&path, &native)?;
    #[allow(unsafe_code)]
    // SAFETY: the file holds exactly what this engine's `precompile` just produced.
    let program = unsafe { Program::load_precompiled(&engine, &path) }?;
    assert_eq!(program.kind(), Kind::Cli);
    let out = Capture::new(1 << 16);
    let grants = Grants {
        args: vec!["hello".into()],
        stdout: Stdio::Capture(out.clone()),
        ..Grants::default()
    };
    assert_eq!(program.run(&grants).await?, ExitStatus(0));
    assert_eq!(out.contents(), b"hello from wasm\n");
    // Same engine settings, same key: the cache can find it again.
    assert_eq!(
        engine.compatibility_key(),
        self::engine().compatibility_key()
    );
    Ok(())
}

#[test]
fn a_file_that_is_not_a_precompiled_artifact_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("fake.cwasm");
    std::fs::write(&path, guests::HELLO_COMPONENT)?;
    #[allow(unsafe_code)]
    // SAFETY: detection rejects the file before anything is deserialized.
    let err = unsafe { Program::load_precompiled(&engine(), &path) }.expect_err("refused");
    assert!(
        err.to_string().contains("is not a precompiled artifact"),
        "{err}"
    );
    Ok(())
}
