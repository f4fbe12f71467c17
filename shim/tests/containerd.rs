//! containerd-shim-wa8s-v1 driven by a real containerd 2.2 with the real `ctr`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use wa8s_api::contract::POLICY_ANNOTATION;
use wa8s_e2e::containerd::Containerd;
use wa8s_e2e::netns::Netns;
use wa8s_e2e::process::eventually;
use wa8s_test_components as guests;

mod common;

const RUNTIME: &str = "io.containerd.wa8s.v1";

fn containerd() -> Result<Containerd> {
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-wa8s-v1"));
    let dir = shim.parent().context("shim directory")?;
    Ok(Containerd::start(dir)?)
}

/// Imports `wasm` as the layered image `docker.io/wa8s-test/<name>:latest`.
fn image(c: &Containerd, name: &str, wasm: &[u8]) -> Result<String> {
    let reference = format!("docker.io/wa8s-test/{name}:latest");
    let tar =
        wa8s_e2e::image::layered(&reference, "wasip2", &[("app.wasm", wasm)], &["/app.wasm"])?;
    c.import(&tar, "wasip2/wasm")?;
    Ok(reference)
}

/// `ctr run --rm --runtime wa8s EXTRA… IMAGE ID`: runs a task to completion.
fn run_rm(
    c: &Containerd,
    extra: &[&str],
    image: &str,
    id: &str,
) -> Result<wa8s_e2e::containerd::CtrOutput> {
    let mut args = vec!["run", "--rm", "--runtime", RUNTIME];
    args.extend_from_slice(extra);
    args.extend([image, id]);
    Ok(c.ctr(&args)?)
}

/// `KEY=VALUE` of the policy annotation, for `ctr run --annotation`.
fn policy(env: &[&str]) -> String {
    let annotations = common::policy_annotations(env);
    format!("{POLICY_ANNOTATION}={}", annotations[POLICY_ANNOTATION])
}

fn same_file(a: &Path, b: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

fn task_pid(c: &Containerd, id: &str) -> Result<u32> {
    let list = c.ctr_ok(&["task", "ls"])?;
    list.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id))
                .then(|| f.get(1)?.parse().ok())
                .flatten()
        })
        .with_context(|| format!("task {id} in\n{list}"))
}

fn metric(c: &Containerd, id: &str, name: &str) -> Result<u64> {
    let out = c.ctr_ok(&["task", "metrics", id])?;
    out.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name))
                .then(|| f.next()?.parse().ok())
                .flatten()
        })
        .with_context(|| format!("{name} in\n{out}"))
}

#[test]
fn a_cli_component_prints_its_output_and_its_exit_code_is_the_tasks() -> Result<()> {
    let c = containerd()?;
    let hello = image(&c, "hello", guests::HELLO_COMPONENT)?;
    let out = run_rm(&c, &[], &hello, "hello-1")?;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, c.log());
    assert_eq!(out.stdout, "hello from wasm\n");
    assert!(out.stderr.contains("hello on stderr"), "{}", out.stderr);

    let exit3 = image(&c, "exit3", guests::EXIT3_CORE)?;
    let out = run_rm(&c, &[], &exit3, "exit3-1")?;
    assert_eq!(
        out.code,
        Some(3),
        "the guest's exit code is the task's: {}",
        out.stderr
    );
    Ok(())
}

#[test]
fn the_guest_sees_only_the_environment_its_policy_names() -> Result<()> {
    let c = containerd()?;
    let env = image(&c, "env", guests::ENV_COMPONENT)?;
    let grant = policy(&["GREETING"]);
    let extra = [
        "--env",
        "GREETING=hi",
        "--env",
        "SECRET=leaked",
        "--annotation",
        &grant,
    ];
    let out = run_rm(&c, &extra, &env, "env-1")?;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("GREETING=hi"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("SECRET"),
        "an ungranted variable leaked: {}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("PATH="),
        "runtime variables leaked: {}",
        out.stdout
    );
    Ok(())
}

#[test]
fn a_component_that_cannot_run_fails_create_with_the_reason_and_leaves_nothing() -> Result<()> {
    let c = containerd()?;
    let bad = image(&c, "junk", b"this is not webassembly")?;
    let out = run_rm(&c, &[], &bad, "junk-1")?;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("wa8s:") && out.stderr.to_lowercase().contains("webassembly"),
        "the error should say what is wrong: {}",
        out.stderr
    );
    let newer = format!("{POLICY_ANNOTATION}={{\"version\":9}}");
    let hello = image(&c, "hello2", guests::HELLO_COMPONENT)?;
    let malformed = run_rm(&c, &["--annotation", &newer], &hello, "policy-1")?;
    assert_ne!(malformed.code, Some(0));
    assert!(
        malformed.stderr.contains("contract version 9"),
        "{}",
        malformed.stderr
    );
    Ok(())
}

#[test]
fn an_http_component_serves_in_the_sandbox_netns_confined_and_measured_and_stops_cleanly()
-> Result<()> {
    let c = containerd()?;
    let http = image(&c, "http", guests::HTTP_COMPONENT)?;
    let ns = Netns::new(&format!("wa8s-http-{}", std::process::id()))?;
    let with_ns = ns.ctr_spec();
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--with-ns",
        &with_ns,
        "--annotation",
        &policy(&[]),
        &http,
        "http-1",
    ])?;
    let body = eventually(Duration::from_secs(30), Duration::from_millis(100), || {
        ns.get("http://127.0.0.1:8080/")
    })
    .with_context(|| format!("no answer in the namespace\n{}", c.log()))?;
    assert_eq!(body.trim_end(), "hello from wasm");

    let pid = task_pid(&c, "http-1")?;
    // Every thread (they run guest code), not just the first: capabilities, the bounding
    // set and no_new_privs belong to threads.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    assert!(threads.len() > 1, "the server should run worker threads");
    for tid in &threads {
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))?;
        for (field, want) in [
            ("CapEff", "0000000000000000"),
            ("CapPrm", "0000000000000000"),
            ("CapBnd", "0000000000000000"),
            ("NoNewPrivs", "1"),
        ] {
            let got = status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")))
                .map(str::trim);
            assert_eq!(got, Some(want), "{field} of thread {tid} of guest {pid}");
        }
    }
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let memory = cgroups
        .lines()
        .find(|l| l.contains(":memory:") || l.starts_with("0::"))
        .context("memory cgroup")?;
    assert!(
        memory.ends_with(&format!("/{}/http-1", c.namespace())),
        "{cgroups}"
    );
    assert!(same_file(
        &PathBuf::from(format!("/proc/{pid}/ns/net")),
        &ns.path()
    )?);

    let cpu_before = metric(&c, "http-1", "cpuacct.usage")?;
    assert!(metric(&c, "http-1", "memory.usage_in_bytes")? > 0);
    for _ in 0..100 {
        ns.get("http://127.0.0.1:8080/")
            .context("request under load")?;
    }
    let cpu_after = metric(&c, "http-1", "cpuacct.usage")?;
    assert!(
        cpu_after > cpu_before,
        "CPU usage did not move: {cpu_before} → {cpu_after}"
    );

    // SIGTERM drains and stops; delete leaves no process, cgroup or shim behind.
    let cgroup_dir = PathBuf::from(format!("/sys/fs/cgroup/memory/{}/http-1", c.namespace()));
    c.ctr_ok(&["task", "kill", "http-1"])?;
    eventually(Duration::from_secs(30), Duration::from_millis(100), || {
        c.ctr_ok(&["task", "ls"])
            .ok()
            .filter(|l| l.contains("STOPPED"))
    })
    .context("the task did not stop on SIGTERM")?;
    c.ctr_ok(&["task", "delete", "http-1"])?;
    c.ctr_ok(&["container", "delete", "http-1"])?;
    ensure!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the guest process is still there"
    );
    if Path::new("/sys/fs/cgroup/memory").exists() {
        ensure!(
            !cgroup_dir.exists(),
            "the cgroup {} is still there",
            cgroup_dir.display()
        );
    }
    let gone = eventually(Duration::from_secs(10), Duration::from_millis(50), || {
        c.shim_servers().is_empty().then_some(())
    });
    if gone.is_none() {
        bail!("a shim process outlived its last task");
    }
    Ok(())
}

#[test]
fn two_app_containers_of_one_pod_share_one_shim() -> Result<()> {
    let c = containerd()?;
    let http = image(&c, "http-pod", guests::HTTP_COMPONENT)?;
    let ns = Netns::new(&format!("wa8s-pod-{}", std::process::id()))?;
    let with_ns = ns.ctr_spec();
    let sandbox = "io.kubernetes.cri.sandbox-id=pod-1";
    let second_policy = policy(&[]).replace("\"port\":8080", "\"port\":8081");
    for (id, p) in [("pod-a", policy(&[])), ("pod-b", second_policy)] {
        c.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--with-ns",
            &with_ns,
            "--annotation",
            sandbox,
            "--annotation",
            &p,
            &http,
            id,
        ])?;
    }
    for port in [8080, 8081] {
        eventually(Duration::from_secs(30), Duration::from_millis(100), || {
            ns.get(&format!("http://127.0.0.1:{port}/"))
        })
        .with_context(|| format!("port {port}"))?;
    }
    assert_eq!(c.shim_servers().len(), 1, "one shim per pod");
    Ok(())
}
