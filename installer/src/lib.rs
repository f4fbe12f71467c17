//! The wa8s node installer: puts `containerd-shim-wa8s-v1` on a node and the `wa8s` runtime
//! into containerd's configuration, and undoes both on uninstall.
//!
//! [`containerd_config`] edits the configuration text (pure functions); [`node`] does the
//! work on a node (layout detection, atomic writes, the record uninstall works from,
//! restarting containerd); [`slots`] limits how many nodes do it at once. The
//! `wa8s-node-installer` binary adds the node label and the DaemonSet's lifecycle.

pub mod containerd_config;
pub mod node;
pub mod registry_hosts;
pub mod slots;
