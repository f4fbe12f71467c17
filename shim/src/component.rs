//! Where a container's component comes from, in order: a `.wasm` in the mounted root
//! filesystem (layered images); the image containerd already pulled (its content store, so
//! the pod's imagePullSecrets were used and nothing is downloaded twice); else the image
//! reference pulled through the node-wide cache. Either way it ends up in the verified blob
//! cache under its digest, which is all the guest process is told: the guest and the
//! precompile process find it there and trust it (the cache verified it as it stored it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use wa8s_oci::{
    BlobCache, Credentials, DockerConfigSource, Registry, RegistryConfig, RegistryOptions,
    VerifiedBlob,
};

use crate::content::ContentStore;
use crate::spec::ContainerSpec;

/// Errors obtaining a component.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no component: {0}")]
    Missing(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Oci(#[from] wa8s_oci::Error),
    #[error(transparent)]
    Content(#[from] crate::content::Error),
    #[error("shim configuration {path}: {reason}")]
    Config { path: PathBuf, reason: String },
}

/// Node-wide settings, from `/etc/wa8s/shim.json` (or `$WA8S_SHIM_CONFIG`); all optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    /// Blob and precompile caches live here.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// Bound of the blob cache, in bytes (least recently used components are evicted).
    #[serde(default = "default_cache_bytes")]
    pub max_cache_bytes: u64,
    /// `registry → mirror`, as in containerd's hosts.toml.
    #[serde(default)]
    pub mirrors: BTreeMap<String, String>,
    /// Registries reached over plain HTTP.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// `registry → PEM file` of CAs trusted for that registry (besides the system's roots).
    #[serde(default)]
    pub registry_ca_files: BTreeMap<String, PathBuf>,
    /// Registries the fallback pull may reach at a loopback, link-local or denied address.
    #[serde(default)]
    pub private_registries: Vec<String>,
    /// Networks (CIDR) the fallback pull never reaches unless the registry is private.
    #[serde(default)]
    pub denied_networks: Vec<String>,
    /// CA certificates (PEM) a guest's https requests trust besides Mozilla's roots.
    #[serde(default)]
    pub guest_ca_file: Option<PathBuf>,
    /// Which seccomp filters confine a guest process.
    #[serde(default)]
    pub guest_seccomp: GuestSeccomp,
}

/// Which seccomp filters confine a guest process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GuestSeccomp {
    /// The container's profile and the wa8s allowlist on top (the default).
    #[default]
    Wa8s,
    /// The container's profile only: an escape hatch should a node's libraries need a call
    /// the allowlist lacks.
    Container,
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from("/var/lib/wa8s")
}

fn default_cache_bytes() -> u64 {
    4 << 30
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            cache_dir: default_cache_dir(),
            max_cache_bytes: default_cache_bytes(),
            mirrors: BTreeMap::new(),
            insecure_registries: Vec::new(),
            registry_ca_files: BTreeMap::new(),
            private_registries: Vec::new(),
            denied_networks: Vec::new(),
            guest_ca_file: None,
            guest_seccomp: GuestSeccomp::default(),
        }
    }
}

impl NodeConfig {
    /// How the fallback pull reaches registries: the node's mirrors, plain-HTTP hosts and
    /// CAs, with requests gated by address (an image name is the pod author's choice).
    pub fn registry(&self) -> Result<RegistryConfig, wa8s_oci::Error> {
        let mut config = RegistryConfig {
            insecure: self.insecure_registries.clone(),
            mirrors: self.mirrors.clone(),
            ..RegistryConfig::default()
        };
        for (registry, file) in &self.registry_ca_files {
            config.add_ca_file(registry, file)?;
        }
        config.gate_addresses(self.private_registries.clone(), &self.denied_networks)?;
        Ok(config)
    }

    /// Reads the node configuration; a missing file means the defaults.
    pub fn load() -> Result<Self, Error> {
        let path = std::env::var_os("WA8S_SHIM_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/etc/wa8s/shim.json"));
        match std::fs::read(&path) {
            Ok(bytes) => {
                let config: NodeConfig =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Config {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                // Checked now, so a bad CA file or network fails every create with its name.
                config.registry().map_err(|e| Error::Config {
                    path,
                    reason: e.to_string(),
                })?;
                Ok(config)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeConfig::default()),
            Err(e) => Err(Error::Config {
                path,
                reason: e.to_string(),
            }),
        }
    }

    pub fn blobs(&self) -> Result<BlobCache, Error> {
        Ok(BlobCache::new(
            self.cache_dir.join("components"),
            self.max_cache_bytes,
        )?)
    }

    pub fn precompiled_dir(&self) -> PathBuf {
        self.cache_dir.join("precompiled")
    }
}

/// The `.wasm` the container's `args[0]` names inside `rootfs`, if it is there (and inside).
fn in_rootfs(rootfs: &Path, spec: &ContainerSpec) -> Result<Option<PathBuf>, Error> {
    let Some(entry) = spec
        .args
        .first()
        .filter(|a| *a != wa8s_api::contract::IMAGE_COMPONENT_COMMAND)
    else {
        return Ok(None);
    };
    let Ok(root) = rootfs.canonicalize() else {
        return Ok(None);
    };
    let candidate = root.join(entry.trim_start_matches('/'));
    let Ok(resolved) = candidate.canonicalize() else {
        return Ok(None);
    };
    // A symlink in the image must not make the shim read a host file.
    if !resolved.starts_with(&root) || !resolved.is_file() {
        return Ok(None);
    }
    Ok(Some(resolved))
}

/// Obtains the component for `spec` (container `id`) into `blobs`.
pub async fn obtain(
    id: &str,
    spec: &ContainerSpec,
    rootfs: &Path,
    node: &NodeConfig,
    blobs: &BlobCache,
    containerd: Option<&ContentStore>,
) -> Result<VerifiedBlob, Error> {
    if let Some(path) = in_rootfs(rootfs, spec)? {
        let bytes = std::fs::read(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        return Ok(blobs.insert(bytes).await?);
    }
    if let Some(store) = containerd {
        match store
            .component(id, wa8s_oci::DEFAULT_MAX_COMPONENT_BYTES, blobs)
            .await
        {
            Ok(Some(found)) => {
                tracing::info!(
                    "container {id}: component {} of {} read from containerd's content store",
                    found.component.digest(),
                    found.image
                );
                return Ok(found.component);
            }
            Ok(None) => tracing::info!(
                "container {id}: containerd holds no complete wasm artifact for its image; pulling it"
            ),
            // The registry may still serve it; say why the store was not used.
            Err(e @ crate::content::Error::Unavailable { .. }) => {
                let why = crate::protocol::Failure::of(&e);
                tracing::warn!("container {id}: {why}; pulling the image instead");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let Some(image) = spec.image() else {
        return Err(Error::Missing(format!(
            "the root filesystem has no {} and the container names no image to pull",
            spec.args.first().map_or("entry point", String::as_str)
        )));
    };
    let registry = Registry::new(RegistryOptions {
        credentials: Credentials {
            explicit: None,
            pull_secrets: Vec::new(),
            docker_config: DockerConfigSource::Ignored,
        },
        config: node.registry()?,
    });
    let (_, component) = registry.pull_cached(image, blobs).await?;
    Ok(component)
}
