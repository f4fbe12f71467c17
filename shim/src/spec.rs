//! What the shim needs from a container's OCI runtime spec (`<bundle>/config.json`): the pod
//! contract (annotations, env, mounts, resources), the sandbox it belongs to, its network
//! namespace and cgroup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use wa8s_api::contract::{self, Policy};

use crate::cgroup::{CgroupsPath, Limits};

/// CRI annotations.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// Errors reading a spec.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the OCI spec {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(transparent)]
    Contract(#[from] contract::Error),
    #[error(transparent)]
    CgroupsPath(#[from] crate::cgroup::Error),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::Error),
}

/// A pod's sandbox ("pause") container, or an application container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sandbox,
    App,
}

/// The parts of the spec the shim acts on.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub kind: Kind,
    pub sandbox_id: Option<String>,
    pub annotations: BTreeMap<String, String>,
    pub policy: Policy,
    /// `None`: the host's network namespace.
    pub netns: Option<PathBuf>,
    pub cgroups_path: Option<CgroupsPath>,
    pub limits: Limits,
    pub args: Vec<String>,
    /// `NAME=value` as the runtime would set them.
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Bind mounts (volumes), by destination.
    pub mounts: BTreeMap<String, Volume>,
    /// The root filesystem, relative to the bundle unless absolute.
    pub root: PathBuf,
    /// The container's own seccomp profile, compiled (`None`: unconfined).
    pub seccomp: Option<crate::seccomp::Filters>,
}

/// A volume the kubelet bind-mounts into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Where it is on the node.
    pub source: PathBuf,
    /// Mounted read-only (`readOnly` on the volume mount, or a read-only volume such as a
    /// Secret): no grant can make it writable.
    pub read_only: bool,
}

impl ContainerSpec {
    /// Reads `<bundle>/config.json`.
    pub fn load(bundle: &Path) -> Result<Self, Error> {
        let path = bundle.join("config.json");
        let spec = Spec::load(&path).map_err(|e| Error::Read {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let annotations: BTreeMap<String, String> = spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let kind = match annotations.get(CONTAINER_TYPE).map(String::as_str) {
            Some("sandbox") => Kind::Sandbox,
            _ => Kind::App,
        };
        // The sandbox needs no policy; an app container's is read now so a bad one fails
        // the create with the reason.
        let policy = match kind {
            Kind::Sandbox => Policy::deny_all(),
            Kind::App => Policy::from_annotations(&annotations)?,
        };
        let linux = spec.linux().clone().unwrap_or_default();
        let netns = linux
            .namespaces()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .and_then(|n| n.path().clone());
        let mut limits = Limits::default();
        if let Some(r) = linux.resources() {
            if let Some(m) = r.memory() {
                limits.memory_bytes = m.limit().filter(|l| *l > 0);
            }
            if let Some(c) = r.cpu() {
                limits.cpu_quota_us = c.quota().filter(|q| *q > 0);
                limits.cpu_period_us = c.period().filter(|p| *p > 0);
                limits.cpu_shares = c.shares().filter(|s| *s > 0);
            }
            if let Some(p) = r.pids() {
                limits.pids = Some(p.limit()).filter(|l| *l > 0);
            }
        }
        let process = spec.process().clone().unwrap_or_default();
        let env = process
            .env()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        let mounts = spec
            .mounts()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| {
                m.typ().as_deref() == Some("bind")
                    || m.options()
                        .as_ref()
                        .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
            })
            .filter_map(|m| {
                let read_only = m
                    .options()
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|x| x == "ro"));
                Some((
                    m.destination().to_string_lossy().into_owned(),
                    Volume {
                        source: m.source().clone()?,
                        read_only,
                    },
                ))
            })
            .collect();
        let user = process.user();
        Ok(ContainerSpec {
            kind,
            sandbox_id: annotations.get(SANDBOX_ID).cloned(),
            policy,
            netns,
            cgroups_path: linux
                .cgroups_path()
                .as_ref()
                .map(|p| CgroupsPath::parse(&p.to_string_lossy()))
                .transpose()?,
            limits,
            args: process.args().clone().unwrap_or_default(),
            env,
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            mounts,
            root: spec
                .root()
                .as_ref()
                .map(|r| r.path().clone())
                .unwrap_or_else(|| PathBuf::from("rootfs")),
            seccomp: linux
                .seccomp()
                .as_ref()
                .map(crate::seccomp::Filters::oci)
                .transpose()?,
            annotations,
        })
    }

    /// The root filesystem's path on the host.
    pub fn rootfs(&self, bundle: &Path) -> PathBuf {
        if self.root.is_absolute() {
            self.root.clone()
        } else {
            bundle.join(&self.root)
        }
    }

    /// The image reference the container was created from (CRI), if known.
    pub fn image(&self) -> Option<&str> {
        self.annotations.get(IMAGE_NAME).map(String::as_str)
    }
}
