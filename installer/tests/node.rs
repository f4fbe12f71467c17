//! The installer on a node's filesystem: layout detection on fake node roots, install and
//! uninstall through the library, and the `wa8s-node-installer` binary end to end with a
//! restart command. The containerd it restarts here is a stand-in that only re-creates its
//! socket (the chart's e2e test restarts a real one).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use wa8s_installer::containerd_config::is_template;
use wa8s_installer::node::{self, Distribution, Layout, Options, Restart, SHIM_NAME};

use common::{fixture, node_root};

fn read(o: &Options, node_path: &str) -> Option<String> {
    std::fs::read_to_string(o.on_node(Path::new(node_path))).ok()
}

#[test]
fn the_layout_is_found_for_plain_drop_in_k3s_and_missing_configurations() -> Result<()> {
    let (_d, o) = node_root(&[(
        "/etc/containerd/config.toml",
        &fixture("kind-style-v2.toml")?,
    )])?;
    assert_eq!(
        node::detect(&o)?,
        Layout::File {
            path: "/etc/containerd/config.toml".into(),
            version: 2
        }
    );

    let (_d, o) = node_root(&[(
        "/etc/containerd/config.toml",
        &fixture("containerd-2.2.9-default.toml")?,
    )])?;
    assert_eq!(
        node::detect(&o)?,
        Layout::DropIn {
            path: "/etc/containerd/conf.d/wa8s.toml".into(),
            version: 3,
            systemd_cgroup: Some(false),
        }
    );

    let (_d, o) = node_root(&[])?;
    assert_eq!(
        node::detect(&o)?,
        Layout::File {
            path: "/etc/containerd/config.toml".into(),
            version: 2
        }
    );

    // k3s: the template matching the version k3s renders, or the one that exists.
    let k3s = "/var/lib/rancher/k3s/agent/etc/containerd";
    let rendered_v3 = format!("{k3s}/config.toml");
    let (_d, o) = node_root(&[(&rendered_v3, "version = 3\n")])?;
    assert_eq!(
        node::detect(&o)?,
        Layout::K3sTemplate {
            path: format!("{k3s}/config-v3.toml.tmpl").into(),
            version: 3
        }
    );
    let (_d, o) = node_root(&[(&rendered_v3, "version = 2\n")])?;
    assert_eq!(
        node::detect(&o)?,
        Layout::K3sTemplate {
            path: format!("{k3s}/config.toml.tmpl").into(),
            version: 2
        }
    );
    let existing = format!("{k3s}/config.toml.tmpl");
    let (_d, o) = node_root(&[(&rendered_v3, "version = 3\n"), (&existing, "x")])?;
    assert_eq!(node::detect(&o)?.path(), Path::new(&existing));
    Ok(())
}

/// Installs, installs again, uninstalls; checks idempotence and byte-exact restoration of
/// the file the layout names.
fn round_trip(files: &[(&str, &str)], written: &str) -> Result<()> {
    let (_d, o) = node_root(files)?;
    let before = read(&o, written);
    let first = node::install(&o)?;
    assert_eq!(first.config_changed.as_deref(), Some(Path::new(written)));
    assert!(first.shim_changed, "the shim is copied");
    let text = read(&o, written).context("the installer wrote the file")?;
    assert!(
        text.contains("io.containerd.wa8s.v1") && text.contains("wa8s.reconciler.io/policy"),
        "{text}"
    );
    assert!(
        o.on_node(Path::new("/usr/local/bin"))
            .join(SHIM_NAME)
            .exists()
    );

    let second = node::install(&o)?;
    assert!(second.is_noop(), "second install changed {second:?}");
    assert_eq!(read(&o, written).as_deref(), Some(text.as_str()));

    let undone = node::uninstall(&o)?;
    assert_eq!(undone.config_changed.as_deref(), Some(Path::new(written)));
    assert_eq!(read(&o, written), before, "uninstall restores {written}");
    assert!(
        !o.on_node(Path::new("/usr/local/bin"))
            .join(SHIM_NAME)
            .exists()
    );
    assert!(!o.on_node(&o.state_file).exists(), "the record goes last");
    assert!(
        node::uninstall(&o)?.is_noop(),
        "uninstalling twice is a no-op"
    );
    // Every other file is as it was.
    for (path, text) in files {
        if *path != written {
            assert_eq!(read(&o, path).as_deref(), Some(*text), "{path}");
        }
    }
    Ok(())
}

#[test]
fn install_is_idempotent_and_uninstall_restores_every_layout_byte_for_byte() -> Result<()> {
    let main = "/etc/containerd/config.toml";
    round_trip(&[(main, &fixture("kind-style-v2.toml")?)], main)?;
    round_trip(&[(main, &fixture("others-with-comments-v3.toml")?)], main)?;
    round_trip(&[(main, &fixture("containerd-1.6.20-default.toml")?)], main)?;
    round_trip(
        &[(main, &fixture("containerd-2.2.9-default.toml")?)],
        "/etc/containerd/conf.d/wa8s.toml",
    )?;
    round_trip(&[], main)?;
    let k3s = "/var/lib/rancher/k3s/agent/etc/containerd";
    let template = format!("{k3s}/config-v3.toml.tmpl");
    round_trip(
        &[
            (&format!("{k3s}/config.toml"), "version = 3\n"),
            (&template, &fixture("k3s-config-v3.toml.tmpl")?),
        ],
        &template,
    )?;
    round_trip(
        &[(&format!("{k3s}/config.toml"), "version = 3\n")],
        &template,
    )?;
    assert!(is_template(Path::new(&template)));
    Ok(())
}

#[test]
fn reinstalling_after_an_upgrade_keeps_the_original_from_before_the_first_install() -> Result<()> {
    let main = "/etc/containerd/config.toml";
    let original = fixture("kind-style-v2.toml")?;
    let (_d, mut o) = node_root(&[(main, &original)])?;
    node::install(&o)?;
    // A newer installer passes one more pod annotation: the entry is brought up to date.
    o.runtime.pod_annotations.push("example.com/extra".into());
    let upgraded = node::install(&o)?;
    assert!(upgraded.config_changed.is_some());
    assert!(read(&o, main).is_some_and(|t| t.contains("example.com/extra")));
    node::uninstall(&o)?;
    assert_eq!(read(&o, main).as_deref(), Some(original.as_str()));
    Ok(())
}

#[test]
fn a_configuration_that_does_not_parse_is_refused_and_nothing_is_touched() -> Result<()> {
    let main = "/etc/containerd/config.toml";
    let broken = "version = 2\n[plugins\nthis is not toml\n";
    let (_d, o) = node_root(&[(main, broken)])?;
    let err = node::install(&o).expect_err("a broken file is refused");
    let message = err.to_string();
    assert!(
        message.contains("/etc/containerd/config.toml")
            && message.contains("not valid TOML")
            && message.contains("left untouched"),
        "{message}"
    );
    assert_eq!(read(&o, main).as_deref(), Some(broken));
    assert!(
        !o.on_node(Path::new("/usr/local/bin"))
            .join(SHIM_NAME)
            .exists()
    );
    assert!(!o.on_node(&o.state_file).exists());

    let (_d, o) = node_root(&[(main, "version = 1\n")])?;
    let message = node::install(&o)
        .expect_err("version 1 is refused")
        .to_string();
    assert!(message.contains("version 1 is not supported"), "{message}");
    Ok(())
}

#[test]
fn automatic_restart_without_systemd_or_a_command_is_refused_with_what_to_set() -> Result<()> {
    let (_d, mut o) = node_root(&[])?;
    o.restart = Restart::Auto;
    let message = node::install(&o)
        .expect_err("no way to restart")
        .to_string();
    assert!(message.contains("installer.restart.command"), "{message}");
    assert!(
        read(&o, "/etc/containerd/config.toml").is_none(),
        "nothing written"
    );
    assert!(!o.on_node(&o.state_file).exists());
    Ok(())
}

#[test]
fn automatic_restart_picks_systemds_containerd_or_the_k3s_unit_the_node_has() -> Result<()> {
    let (_d, mut o) = node_root(&[
        ("/run/systemd/system/.keep", ""),
        ("/etc/systemd/system/k3s-agent.service", ""),
    ])?;
    o.restart = Restart::Auto;
    assert_eq!(
        node::resolve(&o, Distribution::Containerd)?,
        Restart::Systemd("containerd".into())
    );
    assert_eq!(
        node::resolve(&o, Distribution::K3s)?,
        Restart::Systemd("k3s-agent".into())
    );
    let (_d, mut o) = node_root(&[("/run/systemd/system/.keep", "")])?;
    o.restart = Restart::Auto;
    assert_eq!(
        node::resolve(&o, Distribution::K3s)?,
        Restart::Systemd("k3s".into())
    );
    o.restart = Restart::Command("rc-service containerd restart".into());
    assert_eq!(node::resolve(&o, Distribution::Containerd)?, o.restart);
    Ok(())
}

/// A stand-in containerd: a process that (re)binds a unix socket, started by the restart
/// command, stopped by PID when the test ends.
struct FakeContainerd {
    dir: PathBuf,
}

impl FakeContainerd {
    fn new(dir: &Path) -> Result<Self> {
        std::fs::write(
            dir.join("fake-containerd.py"),
            r#"import os, socket, sys, time
path, pidfile = sys.argv[1], sys.argv[2]
try:
    os.kill(int(open(pidfile).read()), 15)
except Exception:
    pass
if os.path.exists(path):
    os.unlink(path)
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen()
open(pidfile, "w").write(str(os.getpid()))
time.sleep(120)
"#,
        )?;
        Ok(FakeContainerd {
            dir: dir.to_owned(),
        })
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn restart_command(&self) -> String {
        let d = self.dir.display();
        format!(
            "echo restart >> {d}/restarts; python3 {d}/fake-containerd.py {d}/containerd.sock {d}/containerd.pid >/dev/null 2>&1 &"
        )
    }

    fn restarts(&self) -> usize {
        std::fs::read_to_string(self.dir.join("restarts"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for FakeContainerd {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("containerd.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

fn installer(args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wa8s-node-installer"));
    cmd.args(args)
        .env_remove("NODE_NAME")
        .env("WA8S_LOG", "info");
    wa8s_e2e::process::run_with_timeout(cmd, Duration::from_secs(60))
        .context("running wa8s-node-installer")
}

#[test]
fn the_binary_restarts_containerd_only_when_the_configuration_changes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let fake = FakeContainerd::new(d)?;
    let config = d.join("etc/config.toml");
    std::fs::create_dir_all(config.parent().context("parent")?)?;
    let original = fixture("others-with-comments-v3.toml")?;
    std::fs::write(&config, &original)?;
    let shim = d.join("containerd-shim-wa8s-v1");
    std::fs::write(&shim, "shim")?;
    let restart = fake.restart_command();
    let p = |p: &Path| p.display().to_string();
    let common = [
        "--root".to_owned(),
        "/".to_owned(),
        "--config".to_owned(),
        p(&config),
        "--shim".to_owned(),
        p(&shim),
        "--shim-dir".to_owned(),
        p(&d.join("bin")),
        "--state-file".to_owned(),
        p(&d.join("state/installer.json")),
        "--socket".to_owned(),
        p(&fake.socket()),
        "--restart".to_owned(),
        "command".to_owned(),
        "--restart-timeout".to_owned(),
        "20s".to_owned(),
    ];
    let run_with = |restart: &str, sub: &[&str]| -> Result<Output> {
        let mut args: Vec<&str> = sub.to_vec();
        args.extend(common.iter().map(String::as_str));
        args.extend(["--restart-command", restart]);
        installer(&args)
    };
    let run = |sub: &[&str]| -> Result<Output> {
        let out = run_with(&restart, sub)?;
        if !out.status.success() {
            bail!(
                "wa8s-node-installer {sub:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    };

    // A restart that fails leaves the restart pending: the next run restarts although the
    // file is already as wanted.
    let failed = run_with("exit 1", &["install", "--once"])?;
    assert!(!failed.status.success());
    assert!(std::fs::read_to_string(&config)?.contains("io.containerd.wa8s.v1"));
    let not_ready = run_with("true", &["ready"])?;
    assert!(
        !not_ready.status.success(),
        "ready before containerd restarted"
    );
    assert!(String::from_utf8_lossy(&not_ready.stderr).contains("has not been restarted"));
    run(&["install", "--once"])?;
    assert_eq!(fake.restarts(), 1);
    run(&["ready"])?;
    assert!(std::fs::read_to_string(&config)?.contains("io.containerd.wa8s.v1"));
    assert_eq!(std::fs::read(d.join("bin").join(SHIM_NAME))?, b"shim");

    let again = run(&["install", "--once"])?;
    assert_eq!(fake.restarts(), 1, "nothing changed, so no restart");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("nothing to change"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    run(&["uninstall"])?;
    assert_eq!(fake.restarts(), 2);
    assert_eq!(std::fs::read_to_string(&config)?, original);
    assert!(!d.join("bin").join(SHIM_NAME).exists());
    ensure!(!d.join("state/installer.json").exists());
    Ok(())
}

#[test]
fn a_failing_restart_command_or_a_containerd_that_never_returns_is_reported() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let shim = d.join("shim");
    std::fs::write(&shim, "shim")?;
    let out = |restart: &str, timeout: &str| -> Result<String> {
        let _ = std::fs::remove_file(d.join("state.json"));
        let _ = std::fs::remove_file(d.join("config.toml"));
        let o = installer(&[
            "install",
            "--once",
            "--root",
            "/",
            "--config",
            &d.join("config.toml").display().to_string(),
            "--shim",
            &shim.display().to_string(),
            "--shim-dir",
            &d.join("bin").display().to_string(),
            "--state-file",
            &d.join("state.json").display().to_string(),
            "--socket",
            &d.join("none.sock").display().to_string(),
            "--restart",
            "command",
            "--restart-command",
            restart,
            "--restart-timeout",
            timeout,
        ])?;
        ensure!(!o.status.success(), "expected a failure");
        Ok(String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let failed = out("echo cannot reach systemd >&2; exit 3", "5s")?;
    assert!(
        failed
            .contains("restarting containerd with `echo cannot reach systemd >&2; exit 3` failed")
            && failed.contains("cannot reach systemd"),
        "{failed}"
    );
    let silent = out("true", "1s")?;
    assert!(
        silent.contains("containerd did not come back on") && silent.contains("none.sock"),
        "{silent}"
    );
    Ok(())
}
