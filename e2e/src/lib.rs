//! Test harness for wa8s on real Kubernetes parts.
//!
//! It assembles a control plane from upstream binaries (etcd and kube-apiserver built from
//! the Go modules by `e2e/scripts/build-binaries.sh` and cached by version), starts it on
//! loopback with a throwaway PKI, and stops every process it started by PID. Tests drive it
//! with the real `kubectl`, each in its own namespace.

pub mod binaries;
pub mod cleanup;
pub mod containerd;
pub mod control_plane;
pub mod dns;
pub mod error;
pub mod guests;
pub mod helm;
pub mod http;
pub mod image;
pub mod kind;
pub mod kubectl;
pub mod modgraph;
pub mod netns;
pub mod node;
pub mod otel;
pub mod paths;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod registry;
pub mod release;
pub mod scenario;
pub mod token;

pub use control_plane::ControlPlane;
pub use kubectl::{Kubectl, Namespace};
pub use paths::{cache_dir, repo_root, shared_dir};
pub use registry::Registry;
