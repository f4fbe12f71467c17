//! Where things are: the repository, the per-user cache, a node's files under its state
//! directory, and the names of the machine-wide objects (bridge, cgroup root, CNI network,
//! upstream namespace) a node on network `n` creates, so setup and teardown derive them alike.
//!
//! A leaf: it uses no other module of the crate.

use std::path::{Path, PathBuf};

/// Root of the wa8s repository (the workspace).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The `shared/` folder that sits beside the repository (fixtures users apply verbatim).
pub fn shared_dir() -> PathBuf {
    std::env::var_os("WA8S_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("..").join("shared"))
}

/// The per-user cache for built binaries and run state (`$WA8S_CACHE`, default
/// `~/.cache/wa8s`).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WA8S_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("wa8s")
}

/// The bridge's own address on network `n`, the pods' gateway (`10.<244+n>.0.1`): how pods
/// reach servers on the node.
pub fn gateway(n: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 244 + n, 0, 1)
}

/// The pod subnet of network `n` (`10.<244+n>.0.0/24`; the indexes in use are 0 to 3).
pub(crate) fn pod_subnet(n: u8) -> String {
    format!("10.{}.0.0/24", 244 + u16::from(n))
}

/// The machine-wide names a node on network `n` creates; teardown derives them the same way.
pub(crate) fn bridge(n: u8) -> String {
    format!("wa8s{n}")
}

pub(crate) fn cgroup_root(n: u8) -> String {
    format!("wa8s-node-{n}")
}

pub(crate) fn cni_network(n: u8) -> String {
    format!("wa8s-{n}")
}

/// The node's files: `<state>/node/…`. Short paths: unix sockets are limited to 108 bytes.
pub(crate) fn node_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("node")
}

/// containerd's CRI socket of the node recorded under `state_dir`.
pub fn containerd_socket(state_dir: &Path) -> PathBuf {
    node_dir(state_dir).join("containerd.sock")
}

/// The containerd configuration file of the node in `state_dir`.
pub fn containerd_config_file(state_dir: &Path) -> PathBuf {
    node_dir(state_dir).join("containerd.toml")
}

/// The directory on the node's containerd PATH where the chart's installer puts the shim
/// (empty on a node started without the wa8s runtime).
pub fn installed_shim_dir(state_dir: &Path) -> PathBuf {
    node_dir(state_dir).join("bin")
}

/// The network namespace of a scenario's upstream server on network `n`; teardown of a node
/// removes a leftover one.
pub(crate) fn upstream_netns(network: u8) -> String {
    format!("wa8s-upstream{network}")
}
