//! Test harness for wa8s on real Kubernetes parts.
//!
//! It assembles a control plane from upstream binaries (etcd and kube-apiserver built from
//! the Go modules by `e2e/scripts/build-binaries.sh` and cached by version), starts it on
//! loopback with a throwaway PKI, and stops every process it started by PID. Tests drive it
//! with the real `kubectl`, each in its own namespace.

pub mod binaries;
pub mod containerd;
pub mod control_plane;
pub mod dns;
pub mod helm;
pub mod http;
pub mod image;
pub mod kind;
pub mod kubectl;
pub mod netns;
pub mod node;
pub mod pki;
pub mod process;
pub mod registry;
pub mod scenario;
pub mod token;

use std::path::PathBuf;

pub use control_plane::ControlPlane;
pub use kubectl::{Kubectl, Namespace};
pub use registry::Registry;

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
