//! The wa8s node installer: puts `containerd-shim-wa8s-v1` on a node and the `wa8s` runtime
//! into containerd's configuration, and undoes both on uninstall.
//!
//! Today this crate holds the configuration editing ([`containerd_config`]); the DaemonSet
//! binary that copies the shim, restarts containerd and labels the node builds on it.

pub mod containerd_config;
