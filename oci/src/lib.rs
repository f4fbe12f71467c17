//! Wasm components as OCI artifacts.
//!
//! - [`artifact`]: what a binary is (component or preview1 module, its imports and exports)
//!   and the CNCF wasm artifact format wa8s writes;
//! - [`Registry`]: push, resolve and pull with credentials, mirrors and TLS rules, reading the
//!   CNCF format, the older `vnd.wasm.*.v1` format, layered images and image indexes;
//! - [`image`]: from a manifest to the binary it carries, whatever store holds the blobs
//!   (a registry, or containerd's content store for the shim);
//! - [`RegistryConfig`]: mirrors, CAs, plain-HTTP hosts and the [`AddressPolicy`] (which
//!   addresses registry requests may reach), the same for the CLI, the operator and the shim;
//! - [`BlobCache`]: the node-wide content-addressed cache every pull goes through.
//!
//! The shim, the operator and the `wa8s` CLI all use this crate, so they agree on formats.

pub mod artifact;
mod auth;
mod cache;
mod config;
mod error;
mod gate;
pub mod image;
mod registry;
mod tls;

pub use auth::{Credentials, DockerConfigSource};
pub use cache::{BlobCache, VerifiedBlob};
pub use config::RegistryConfig;
pub use error::Error;
pub use gate::AddressPolicy;
pub use registry::{
    DEFAULT_MAX_COMPONENT_BYTES, Described, PUSH_PIECE, Progress, Pulled, Pushed, Registry,
    RegistryOptions, Resolved, Written, parse_reference,
};
pub use tls::check_registry_ca;

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// Hashes of blobs (components, layers) this process has made, to check that a component is
/// hashed once per node: when it arrives, never on a later start.
static BLOB_HASHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many blobs this process has hashed (downloads verified, cache writes and full checks,
/// binaries inspected): for tests.
#[doc(hidden)]
pub fn hashes() -> u64 {
    BLOB_HASHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts a blob hashed elsewhere (by the download stream).
pub(crate) fn count_hash() {
    BLOB_HASHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// [`sha256_digest`] of a blob, counted in [`hashes`].
pub(crate) fn hash_blob(bytes: &[u8]) -> String {
    count_hash();
    sha256_digest(bytes)
}
