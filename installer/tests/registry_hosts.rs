//! The nodes' registry hosts (`hosts.toml`) on fake node roots built from real configuration
//! files; every configuration the installer leaves is read back by a real containerd 2.2.9
//! (`containerd config dump`), which must name the hosts directory the files went to. (That
//! containerd then pulls through them is the kind suite's part: its nodes get their mirror
//! only from the chart.)

mod common;

use std::path::Path;

use anyhow::{Context, Result, ensure};
use wa8s_installer::node::{self, Options};

use common::{fixture, tree};

/// A CA certificate (PEM), made once per test process.
fn ca() -> &'static str {
    static CA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("a certificate").pem()
    })
}

/// A fake node root holding `files` (node path → contents), configured for a mirror of
/// ghcr.io on a plain-HTTP registry and a private registry with its own CA.
fn node_root(files: &[(&str, &str)]) -> Result<(tempfile::TempDir, Options)> {
    let (dir, mut o) = common::node_root(files)?;
    let ca_file = dir.path().join("image/ca.crt");
    std::fs::write(&ca_file, ca())?;
    o.registry.add_mirror_setting("ghcr.io=10.89.0.1:5000")?;
    o.registry.insecure.push("10.89.0.1:5000".into());
    o.registry
        .add_ca_setting(&format!("registry.internal:5443={}", ca_file.display()))?;
    Ok((dir, o))
}

fn read(o: &Options, node_path: &str) -> Option<String> {
    std::fs::read_to_string(o.on_node(Path::new(node_path))).ok()
}

/// What a real containerd makes of the node's `/etc/containerd/config.toml` (its imports
/// resolved inside the node root): its `config dump`.
fn containerd_dump(o: &Options) -> Result<String> {
    let main = o.on_node(Path::new("/etc/containerd/config.toml"));
    // Imports name node paths: point them into the fake root.
    let text = std::fs::read_to_string(&main)?.replace(
        "'/etc/containerd/conf.d/*.toml'",
        &format!("'{}/etc/containerd/conf.d/*.toml'", o.root.display()),
    );
    common::containerd_dump_in(&o.root, &text)
}

fn assert_hosts_written(o: &Options, dir: &str) {
    let ghcr = read(o, &format!("{dir}/ghcr.io/hosts.toml")).unwrap_or_default();
    assert!(
        ghcr.contains("server = \"https://ghcr.io\"")
            && ghcr.contains("[host.\"http://10.89.0.1:5000\"]")
            && ghcr.contains("capabilities = [\"pull\", \"resolve\"]"),
        "{ghcr}"
    );
    let mirror = read(o, &format!("{dir}/10.89.0.1:5000/hosts.toml")).unwrap_or_default();
    assert!(
        mirror.contains("server = \"http://10.89.0.1:5000\""),
        "{mirror}"
    );
    let private = read(o, &format!("{dir}/registry.internal:5443/hosts.toml")).unwrap_or_default();
    assert!(
        private.contains("server = \"https://registry.internal:5443\"")
            && private.contains(&format!(
                "ca = \"{dir}/registry.internal:5443/wa8s-ca.crt\""
            )),
        "{private}"
    );
    assert_eq!(
        read(o, &format!("{dir}/registry.internal:5443/wa8s-ca.crt")).as_deref(),
        Some(ca())
    );
}

#[test]
fn a_node_without_a_hosts_directory_gets_one_and_uninstall_gives_every_byte_back() -> Result<()> {
    let main = "/etc/containerd/config.toml";
    // kind's own node file names no config_path (kind.sh's cluster does not add one either).
    for name in ["kind-v0.33.0.toml", "containerd-1.6.20-default.toml"] {
        let (_d, mut o) = node_root(&[(main, &fixture(name)?)])?;
        let before = tree(&o)?;
        let first = node::install(&o)?;
        assert_eq!(first.hosts_changed.len(), 4, "{name}: {first:?}");
        assert!(first.config_changed.is_some(), "{name}");
        assert_hosts_written(&o, "/etc/containerd/certs.d");
        let dump = containerd_dump(&o)?;
        assert!(
            dump.contains("config_path = '/etc/containerd/certs.d'"),
            "{name}: containerd does not read the hosts directory:\n{dump}"
        );
        assert!(dump.contains("io.containerd.wa8s.v1"), "{name}");
        assert!(
            node::install(&o)?.is_noop(),
            "{name}: twice changes nothing"
        );

        // A mirror taken out of the values: its files go, the rest stays, no restart.
        o.registry.mirrors.clear();
        o.registry.insecure.clear();
        let fewer = node::install(&o)?;
        assert_eq!(fewer.hosts_changed.len(), 2, "{name}: {fewer:?}");
        assert!(fewer.config_changed.is_none() && fewer.restarted.is_none());
        assert!(read(&o, "/etc/containerd/certs.d/ghcr.io/hosts.toml").is_none());
        assert!(
            !o.on_node(Path::new("/etc/containerd/certs.d/ghcr.io"))
                .exists()
        );

        node::uninstall(&o)?;
        let after = tree(&o)?;
        ensure!(
            before == after,
            "{name}: uninstall left the node different: {:?}",
            after.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
    }
    Ok(())
}

#[test]
fn a_hosts_directory_the_node_names_is_used_and_a_users_own_hosts_file_comes_back() -> Result<()> {
    let main = "/etc/containerd/config.toml";
    let config = format!(
        "{}\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/registries:/etc/docker/certs.d\"\n",
        fixture("kind-v0.33.0.toml")?
    );
    let users = "server = \"https://ghcr.io\"\n# the user's own\n";
    let (_d, o) = node_root(&[
        (main, &config),
        ("/etc/containerd/registries/ghcr.io/hosts.toml", users),
    ])?;
    let before = tree(&o)?;
    node::install(&o)?;
    assert_hosts_written(&o, "/etc/containerd/registries");
    let written = read(&o, main).context("config")?;
    assert!(
        written.contains("config_path = \"/etc/containerd/registries:/etc/docker/certs.d\""),
        "the node's own directory list is kept: {written}"
    );
    node::uninstall(&o)?;
    assert_eq!(before, tree(&o)?, "the user's hosts.toml is given back");

    // Edited by someone after the installer wrote it: theirs now, uninstall leaves it.
    let (_d, o) = node_root(&[(main, &config)])?;
    node::install(&o)?;
    let path = "/etc/containerd/registries/ghcr.io/hosts.toml";
    std::fs::write(o.on_node(Path::new(path)), users)?;
    node::uninstall(&o)?;
    assert_eq!(read(&o, path).as_deref(), Some(users));
    Ok(())
}

#[test]
fn a_drop_in_node_gets_the_hosts_directory_in_its_drop_in_and_containerd_merges_it() -> Result<()> {
    let main = "/etc/containerd/config.toml";
    let original = fixture("containerd-2.2.9-default.toml")?;
    let (_d, o) = node_root(&[(main, &original)])?;
    let before = tree(&o)?;
    node::install(&o)?;
    assert_eq!(read(&o, main).as_deref(), Some(original.as_str()));
    let drop_in = read(&o, "/etc/containerd/conf.d/wa8s.toml").context("drop-in")?;
    assert!(drop_in.contains("config_path"), "{drop_in}");
    assert_hosts_written(&o, "/etc/containerd/certs.d");
    let dump = containerd_dump(&o)?;
    assert!(
        dump.contains("config_path = '/etc/containerd/certs.d'")
            && dump.contains("io.containerd.wa8s.v1")
            && dump.contains("runtimes.runc"),
        "containerd's merged view lacks the hosts directory, the runtime or runc:\n{dump}"
    );
    node::uninstall(&o)?;
    assert_eq!(before, tree(&o)?);
    Ok(())
}

#[test]
fn deprecated_registry_mirrors_in_the_config_are_refused_by_name_and_nothing_is_touched()
-> Result<()> {
    let main = "/etc/containerd/config.toml";
    let config = format!(
        "{}\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://mirror.example\"]\n",
        fixture("kind-v0.33.0.toml")?
    );
    let (_d, o) = node_root(&[(main, &config)])?;
    let before = tree(&o)?;
    let e = node::install(&o).expect_err("refused").to_string();
    assert!(
        e.contains("/etc/containerd/config.toml") && e.contains("registry.mirrors"),
        "{e}"
    );
    assert_eq!(before, tree(&o)?, "nothing written");
    // Without registry settings the same node installs as before.
    let mut plain = o.clone();
    plain.registry = Default::default();
    node::install(&plain)?;
    Ok(())
}

#[test]
fn a_k3s_node_gets_the_runtime_but_no_hosts_files() -> Result<()> {
    let k3s = "/var/lib/rancher/k3s/agent/etc/containerd";
    let (_d, o) = node_root(&[(&format!("{k3s}/config.toml"), "version = 3\n")])?;
    let out = node::install(&o)?;
    assert!(out.hosts_changed.is_empty(), "{out:?}");
    assert!(!o.on_node(Path::new(k3s)).join("certs.d/ghcr.io").exists());
    Ok(())
}
