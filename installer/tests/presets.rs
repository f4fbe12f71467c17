//! The distributions beyond containerd's own layout and k3s: RKE2, k0s and MicroK8s, each on a
//! fake node root holding its real files (`tests/fixtures`: RKE2's rendered configuration,
//! k0s's `containerd.toml`, MicroK8s's `containerd-template.toml`). The installer must find
//! the file to write, the unit (or k0s's own restart) and the socket, and what it leaves must
//! be read by a real containerd 2.2.9 (`containerd config dump`) after the distribution's own
//! rendering step; uninstall gives every byte back.

mod common;

use std::path::Path;

use anyhow::{Context, Result, ensure};
use wa8s_installer::node::{self, Distribution, Layout, Options, Restart};

use common::{fixture, node_root, tree};

fn read(o: &Options, node_path: &str) -> Result<String> {
    std::fs::read_to_string(o.on_node(Path::new(node_path)))
        .with_context(|| format!("reading {node_path}"))
}

/// A real containerd's view of `config` (written to a scratch file in the node root).
fn containerd_dump(o: &Options, config: &str) -> Result<String> {
    common::containerd_dump_in(&o.root, config)
}

const UNIT_DIR: &str = "/usr/lib/systemd/system";
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants";

#[test]
fn an_rke2_node_gets_a_template_that_renders_its_own_configuration_and_the_runtime() -> Result<()> {
    let dir = node::RKE2_CONTAINERD_DIR;
    let rendered = fixture("rke2-rendered-config.toml")?;
    // RKE2's tarball installs both units on every node; this one is an agent.
    let (_d, mut o) = node_root(&[
        (&format!("{dir}/config.toml"), &rendered),
        (&format!("{UNIT_DIR}/rke2-server.service"), ""),
        (&format!("{UNIT_DIR}/rke2-agent.service"), ""),
        (&format!("{WANTS}/rke2-agent.service"), ""),
        ("/run/systemd/system/.keep", ""),
    ])?;
    let template = format!("{dir}/config-v3.toml.tmpl");
    assert_eq!(
        node::detect(&o)?,
        Layout::K3sTemplate {
            path: template.clone().into(),
            version: 3
        },
        "RKE2 renders version 3: the v3 template"
    );
    assert_eq!(Distribution::of(Path::new(&template)), Distribution::Rke2);
    assert_eq!(
        Distribution::Rke2.socket(),
        "/run/k3s/containerd/containerd.sock"
    );
    o.restart = Restart::Auto;
    assert_eq!(
        node::resolve(&o, Distribution::Rke2)?,
        Restart::Systemd("rke2-agent".into())
    );
    o.restart = Restart::None;

    let before = tree(&o)?;
    node::install(&o)?;
    let written = read(&o, &template)?;
    // What RKE2 renders from it: its base configuration, then the block.
    let config = written.replace("{{ template \"base\" . }}", &rendered);
    let dump = containerd_dump(&o, &config)?;
    ensure!(
        dump.contains("runtimes.wa8s]") && dump.contains("io.containerd.wa8s.v1"),
        "containerd does not see the runtime:\n{dump}"
    );
    ensure!(dump.contains("runtimes.runc]"), "RKE2's runc is kept");
    node::uninstall(&o)?;
    assert_eq!(before, tree(&o)?);
    Ok(())
}

#[test]
fn a_k0s_node_gets_a_version_3_drop_in_that_k0s_reloads_itself() -> Result<()> {
    let main = node::K0S_CONTAINERD_CONFIG;
    let original = fixture("k0s-containerd.toml")?;
    let (_d, mut o) = node_root(&[(main, &original)])?;
    let drop_in = "/etc/k0s/containerd.d/wa8s.toml";
    assert_eq!(
        node::detect(&o)?,
        Layout::DropIn {
            path: drop_in.into(),
            version: 3,
            systemd_cgroup: None,
        }
    );
    assert_eq!(Distribution::of(Path::new(drop_in)), Distribution::K0s);
    assert_eq!(Distribution::K0s.socket(), "/run/k0s/containerd.sock");
    // k0s restarts containerd when containerd.d changes: no systemd needed, no command.
    o.restart = Restart::Auto;
    assert_eq!(node::resolve(&o, Distribution::K0s)?, Restart::Itself);
    o.restart = Restart::None;

    let before = tree(&o)?;
    node::install(&o)?;
    assert_eq!(read(&o, main)?, original, "k0s's own file is not touched");
    let text = read(&o, drop_in)?;
    // k0s 1.36 refuses drop-ins that are not version 3 or name the v2 CRI plugin.
    ensure!(
        text.contains("version = 3") && !text.contains("io.containerd.grpc.v1.cri"),
        "{text}"
    );
    // containerd's merged view, imports pointed into the node root.
    let config = original.replace(
        "\"/etc/k0s/containerd.d/*.toml\"",
        &format!("\"{}/etc/k0s/containerd.d/*.toml\"", o.root.display()),
    );
    let dump = containerd_dump(&o, &config)?;
    ensure!(
        dump.contains("io.containerd.wa8s.v1"),
        "containerd does not see the runtime:\n{dump}"
    );
    node::uninstall(&o)?;
    assert_eq!(before, tree(&o)?);
    Ok(())
}

#[test]
fn a_k0s_restart_waits_for_the_containerd_k0s_starts() -> Result<()> {
    let main = node::K0S_CONTAINERD_CONFIG;
    let (_d, mut o) = node_root(&[(main, &fixture("k0s-containerd.toml")?)])?;
    o.restart = Restart::Itself;
    o.restart_timeout = std::time::Duration::from_secs(1);
    // Nothing restarts containerd here: the installer says so instead of waiting forever.
    let e = node::install(&o)
        .expect_err("no new containerd")
        .to_string();
    assert!(
        e.contains("/run/k0s/containerd.sock") && e.contains("k0s"),
        "{e}"
    );
    Ok(())
}

#[test]
fn a_microk8s_node_gets_the_runtime_in_its_template_with_the_shims_absolute_path() -> Result<()> {
    let template = node::MICROK8S_CONTAINERD_TEMPLATE;
    let original = fixture("microk8s-containerd-template.toml")?;
    let (_d, mut o) = node_root(&[
        (template, &original),
        (
            "/etc/systemd/system/snap.microk8s.daemon-containerd.service",
            "",
        ),
        ("/run/systemd/system/.keep", ""),
    ])?;
    assert_eq!(
        node::detect(&o)?,
        Layout::File {
            path: template.into(),
            version: 2
        }
    );
    assert_eq!(
        Distribution::MicroK8s.socket(),
        "/var/snap/microk8s/common/run/containerd.sock"
    );
    o.restart = Restart::Auto;
    assert_eq!(
        node::resolve(&o, Distribution::MicroK8s)?,
        Restart::Systemd("snap.microk8s.daemon-containerd".into())
    );
    o.restart = Restart::None;
    o.registry.add_mirror_setting("ghcr.io=10.89.0.1:5000")?;
    o.registry.insecure.push("10.89.0.1:5000".into());

    let before = tree(&o)?;
    let out = node::install(&o)?;
    let written = read(&o, template)?;
    // What MicroK8s's wrapper renders from the template at containerd's start.
    let config = written
        .replace("${SNAP_DATA}", "/var/snap/microk8s/current")
        .replace("${SNAPSHOTTER}", "overlayfs")
        .replace("${RUNTIME_TYPE}", "io.containerd.runc.v2")
        .replace("${RUNTIME}", "runc");
    let dump = containerd_dump(&o, &config)?;
    ensure!(
        dump.contains("io.containerd.wa8s.v1")
            && dump.contains("runtime_path = '/usr/local/bin/containerd-shim-wa8s-v1'"),
        "containerd does not see the runtime by its path:\n{dump}"
    );
    // The registry hosts go where MicroK8s's template says (its ${SNAP_DATA}).
    let hosts = "/var/snap/microk8s/current/args/certs.d/ghcr.io/hosts.toml";
    ensure!(
        out.hosts_changed.iter().any(|p| p == Path::new(hosts)),
        "{out:?}"
    );
    ensure!(read(&o, hosts)?.contains("http://10.89.0.1:5000"));
    node::uninstall(&o)?;
    assert_eq!(before, tree(&o)?);
    Ok(())
}
