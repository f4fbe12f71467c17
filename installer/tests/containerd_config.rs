//! The runtime edits against real configuration files: containerd 1.6.20's and 2.2.9's
//! `containerd config default` output (versions 2 and 3), kind v0.33.0's node file (version 2,
//! which containerd 2.x migrates) and one in its layout, a file with other runtimes and comments,
//! and a k3s template. Every result is also read by a real containerd 2.2.9 (`containerd config
//! dump`), which must show the wa8s runtime.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use wa8s_installer::containerd_config::{
    self as cc, Change, Error, Installed, Runtime, add_runtime, add_to_template,
};

fn fixture(name: &str) -> Result<(PathBuf, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok((path, text))
}

const TOML_FIXTURES: &[&str] = &[
    "containerd-1.6.20-default.toml",
    "containerd-2.2.9-default.toml",
    "kind-style-v2.toml",
    "kind-v0.33.0.toml",
    "others-with-comments-v3.toml",
];

/// What a real containerd makes of `config`: its `config dump` (the merged, migrated view).
fn containerd_dump(config: &str) -> Result<String> {
    let dir = tempfile::tempdir()?;
    common::containerd_dump_in(dir.path(), config)
}

fn written(change: Change) -> Result<String> {
    match change {
        Change::Write(t) => Ok(t),
        Change::Unchanged => bail!("expected a change"),
    }
}

/// A fixture and the same file with the default runtime added: `(path, original, patched)`.
fn patched(name: &str) -> Result<(PathBuf, String, String)> {
    let (path, original) = fixture(name)?;
    let patched = written(add_runtime(
        &original,
        &path.display().to_string(),
        &Runtime::default(),
    )?)?;
    Ok((path, original, patched))
}

#[test]
fn adding_the_runtime_keeps_every_line_and_containerd_reads_it() -> Result<()> {
    for name in TOML_FIXTURES {
        let (_, original, patched) = patched(name)?;
        // Everything that was there is still there, comments and order included.
        let mut rest = patched.as_str();
        for line in original.lines().filter(|l| !l.trim().is_empty()) {
            let at = rest
                .find(line)
                .with_context(|| format!("{name}: line {line:?} lost or moved"))?;
            rest = &rest[at + line.len()..];
        }
        let dump = containerd_dump(&patched).with_context(|| name.to_string())?;
        assert!(
            dump.contains("runtimes.wa8s]") && dump.contains("io.containerd.wa8s.v1"),
            "{name}: containerd does not see the runtime:\n{dump}"
        );
        assert!(
            dump.contains("wa8s.reconciler.io/policy"),
            "{name}: containerd does not pass the policy annotation:\n{dump}"
        );
    }
    Ok(())
}

#[test]
fn adding_twice_changes_nothing_the_second_time() -> Result<()> {
    let runtime = Runtime::default();
    for name in TOML_FIXTURES {
        let (path, original) = fixture(name)?;
        let p = path.display().to_string();
        let once = written(add_runtime(&original, &p, &runtime)?)?;
        assert_eq!(
            add_runtime(&once, &p, &runtime)?,
            Change::Unchanged,
            "{name}"
        );
    }
    Ok(())
}

#[test]
fn uninstall_gives_back_the_original_byte_for_byte() -> Result<()> {
    let runtime = Runtime::default();
    for name in TOML_FIXTURES {
        let (path, original, patched) = patched(name)?;
        let installed = Installed {
            path: path.clone(),
            original: Some(original.clone()),
            written: patched.clone(),
        };
        assert_eq!(
            installed.undo(&patched, &runtime.handler)?,
            Some(original.clone()),
            "{name}"
        );
    }
    Ok(())
}

#[test]
fn uninstall_after_someone_else_edited_the_file_removes_only_the_runtime() -> Result<()> {
    let runtime = Runtime::default();
    let (path, original, patched) = patched("others-with-comments-v3.toml")?;
    let edited = format!("{patched}\n# added by hand after the install\n");
    let installed = Installed {
        path,
        original: Some(original),
        written: patched,
    };
    let undone = installed
        .undo(&edited, &runtime.handler)?
        .context("file kept")?;
    assert!(
        undone.contains("# added by hand after the install"),
        "{undone}"
    );
    assert!(undone.contains("runtimes.crun"), "{undone}");
    assert!(!undone.contains("io.containerd.wa8s.v1"), "{undone}");
    containerd_dump(&undone)?;
    Ok(())
}

#[test]
fn an_older_wa8s_entry_is_brought_up_to_date_in_place() -> Result<()> {
    let old = "version = 3\n\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wa8s]\n  runtime_type = 'io.containerd.wa8s.v1'\n  # tuned by hand\n  privileged_without_host_devices = true\n";
    let patched = written(add_runtime(old, "config.toml", &Runtime::default())?)?;
    assert!(
        patched.contains("privileged_without_host_devices = true"),
        "{patched}"
    );
    assert!(
        patched.contains("pod_annotations = [\"wa8s.reconciler.io/policy\"]"),
        "{patched}"
    );
    assert_eq!(patched.matches("runtimes.wa8s]").count(), 1, "{patched}");
    Ok(())
}

#[test]
fn a_file_that_does_not_parse_or_is_too_old_is_refused_with_the_reason() {
    let broken = "version = 3\n[plugins.'io.containerd.cri.v1.runtime'\n";
    let e = add_runtime(broken, "/etc/containerd/config.toml", &Runtime::default())
        .expect_err("refused");
    assert!(matches!(e, Error::Parse { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("/etc/containerd/config.toml: not valid TOML, left untouched"),
        "{e}"
    );
    let v1 = "[plugins.cri.containerd]\n  snapshotter = 'overlayfs'\n";
    let e =
        add_runtime(v1, "/etc/containerd/config.toml", &Runtime::default()).expect_err("refused");
    assert_eq!(
        e.to_string(),
        "/etc/containerd/config.toml: containerd config version 1 is not supported (only 2 and 3); left untouched"
    );
    let odd = "version = 2\n[plugins]\n\"io.containerd.grpc.v1.cri\" = 'not a table'\n";
    let e = add_runtime(odd, "c.toml", &Runtime::default()).expect_err("refused");
    assert_eq!(
        e.to_string(),
        "c.toml: plugins.io.containerd.grpc.v1.cri is not a table, so the runtime cannot be added there; left untouched"
    );
}

#[test]
fn a_config_that_imports_a_drop_in_directory_gets_its_own_file_there() -> Result<()> {
    let (path, original) = fixture("containerd-2.2.9-default.toml")?;
    let p = path.display().to_string();
    assert_eq!(
        cc::drop_in_dir(&original, &p)?,
        Some(PathBuf::from("/etc/containerd/conf.d"))
    );
    let (path16, original16) = fixture("containerd-1.6.20-default.toml")?;
    assert_eq!(
        cc::drop_in_dir(&original16, &path16.display().to_string())?,
        None
    );
    // The drop-in alone is a configuration containerd reads.
    let drop_in = cc::drop_in(cc::version(&original, &p)?, &Runtime::default());
    let dump = containerd_dump(&drop_in)?;
    assert!(dump.contains("io.containerd.wa8s.v1"), "{dump}");
    Ok(())
}

#[test]
fn a_k3s_template_gets_a_marked_block_that_uninstall_takes_out_exactly() -> Result<()> {
    let runtime = Runtime::default();
    let (path, original) = fixture("k3s-config-v3.toml.tmpl")?;
    assert!(cc::is_template(&path));
    let patched = written(add_to_template(Some(&original), 3, &runtime))?;
    assert!(patched.starts_with(&original), "{patched}");
    assert!(patched.contains("io.containerd.wa8s.v1"), "{patched}");
    assert_eq!(
        add_to_template(Some(&patched), 3, &runtime),
        Change::Unchanged
    );
    let installed = Installed {
        path: path.clone(),
        original: Some(original.clone()),
        written: patched.clone(),
    };
    assert_eq!(installed.undo(&patched, "wa8s")?, Some(original.clone()));
    // Edited since: only the block goes.
    let edited = format!("{patched}# later\n");
    let undone = installed.undo(&edited, "wa8s")?.context("kept")?;
    assert_eq!(undone, format!("{original}# later\n"));

    // No template yet: one is made that renders k3s's own configuration first, and
    // uninstall removes it.
    let made = written(add_to_template(None, 3, &runtime))?;
    assert!(made.starts_with("{{ template \"base\" . }}\n"), "{made}");
    let created = Installed {
        path,
        original: None,
        written: made.clone(),
    };
    assert_eq!(created.undo(&made, "wa8s")?, None);
    assert_eq!(cc::remove_from_template(&made), None);
    Ok(())
}

#[test]
fn the_runtime_takes_the_cgroup_driver_of_the_nodes_runc() -> Result<()> {
    // kind's node file: runc uses the systemd driver, so wa8s does too, and a real containerd
    // reads the option under the wa8s runtime.
    let (path, original, patched) = patched("kind-v0.33.0.toml")?;
    let p = path.display().to_string();
    assert_eq!(cc::runc_systemd_cgroup(&original, &p)?, Some(true));
    assert_eq!(cc::runc_systemd_cgroup(&patched, &p)?, Some(true));
    let doc: toml_edit::DocumentMut = patched.parse()?;
    let wa8s = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["wa8s"];
    assert_eq!(
        wa8s["options"]["SystemdCgroup"].as_bool(),
        Some(true),
        "{patched}"
    );
    assert_eq!(
        add_runtime(&patched, &p, &Runtime::default())?,
        Change::Unchanged
    );
    let dump = containerd_dump(&patched)?;
    let runtime = dump
        .split("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wa8s.options]")
        .nth(1)
        .context("the wa8s runtime's options in containerd's dump")?;
    assert!(
        runtime.trim_start().starts_with("SystemdCgroup = true"),
        "{runtime}"
    );
    // Uninstall gives back kind's file byte for byte.
    let installed = Installed {
        path: path.clone(),
        original: Some(original.clone()),
        written: patched.clone(),
    };
    assert_eq!(installed.undo(&patched, "wa8s")?, Some(original));

    // containerd's defaults say cgroupfs: so does the drop-in made for them.
    let (path, original) = fixture("containerd-2.2.9-default.toml")?;
    let p = path.display().to_string();
    assert_eq!(cc::runc_systemd_cgroup(&original, &p)?, Some(false));
    let drop_in = cc::drop_in(
        3,
        &Runtime {
            systemd_cgroup: Some(false),
            ..Runtime::default()
        },
    );
    assert!(drop_in.contains("SystemdCgroup = false"), "{drop_in}");
    assert!(containerd_dump(&drop_in)?.contains("io.containerd.wa8s.v1"));

    // A file whose runc sets nothing gets no option either.
    let (path, original) = fixture("kind-style-v2.toml")?;
    let p = path.display().to_string();
    assert_eq!(cc::runc_systemd_cgroup(&original, &p)?, None);
    let patched = written(add_runtime(&original, &p, &Runtime::default())?)?;
    assert!(!patched.contains("SystemdCgroup"), "{patched}");
    Ok(())
}

#[test]
fn a_shim_outside_containerds_path_is_named_by_its_absolute_path_and_containerd_reads_it()
-> Result<()> {
    // A node whose /usr/local/bin is read-only (Talos, Bottlerocket, COS): the shim goes to a
    // writable directory off containerd's PATH, and the runtime names it.
    let mut o = wa8s_installer::node::Options::new("/", "/shim");
    o.set_shim_dir("/var/lib/wa8s/bin".into());
    let runtime = o.runtime.clone();
    assert_eq!(
        runtime.runtime_path.as_deref(),
        Some("/var/lib/wa8s/bin/containerd-shim-wa8s-v1")
    );
    for name in ["kind-v0.33.0.toml", "containerd-2.2.9-default.toml"] {
        let (path, original) = fixture(name)?;
        let p = path.display().to_string();
        let patched = written(add_runtime(&original, &p, &runtime)?)?;
        let dump = containerd_dump(&patched)?;
        assert!(
            dump.contains("runtime_path = '/var/lib/wa8s/bin/containerd-shim-wa8s-v1'"),
            "{name}: containerd does not see the shim's path:\n{dump}"
        );
        // Moving the shim back onto the PATH takes the path out again.
        let mut back = o.clone();
        back.set_shim_dir(wa8s_installer::node::DEFAULT_SHIM_DIR.into());
        let moved = written(add_runtime(&patched, &p, &back.runtime)?)?;
        assert!(!moved.contains("/var/lib/wa8s/bin"), "{moved}");
    }
    // A drop-in carries it too.
    let drop_in = cc::drop_in(3, &runtime);
    assert!(containerd_dump(&drop_in)?.contains("runtime_path"));
    Ok(())
}
