//! Resolving `spec.module` to a digest, through the OCI library.

use std::collections::HashMap;
use std::sync::Mutex;

use wa8s_api::Module;
use wa8s_oci::{Credentials, DockerConfigSource, Registry, RegistryConfig, RegistryOptions};

use crate::desired::{ModuleKind, Resolved};

/// Why a module could not be resolved, as the user should read it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct ResolveError {
    /// CamelCase condition reason (`TagNotFound`, `AuthFailed`, `RegistryUnavailable`, …).
    pub reason: &'static str,
    pub message: String,
    /// Worth retrying soon (registry down), as opposed to needing a change by someone.
    pub transient: bool,
}

/// Resolves modules. A trait so reconcile tests can stand in a registry that fails on cue;
/// the acceptance tests use the real one.
#[async_trait::async_trait]
pub trait Resolve: Send + Sync {
    /// `pull_secrets`: `(origin, .dockerconfigjson)` of the object's imagePullSecrets.
    async fn resolve(
        &self,
        module: &Module,
        pull_secrets: Vec<(String, String)>,
    ) -> Result<(String, Resolved), ResolveError>;
}

/// The real resolver: asks the registry (through configured mirrors).
///
/// A poll costs one HEAD per `repository:tag` and credential set per `fresh_for`, however
/// many objects name it: objects resolving the same tag within that time share the answer
/// (and wait for one request in flight rather than send their own). What a digest holds
/// never changes, so the manifest (and wasm config) is read once per digest.
#[derive(Default)]
pub struct OciResolver {
    config: RegistryConfig,
    /// Registry clients by the pull secrets they carry, reused across reconciles: each
    /// holds an HTTP client per registry (its trust roots, its connection pool), which costs
    /// more to build than a resolve and would otherwise be rebuilt every time.
    registries: Mutex<HashMap<Secrets, Registry>>,
    fresh_for: std::time::Duration,
    /// The digest a reference named, and when it was asked, per (reference, credentials).
    polls: Mutex<HashMap<(String, Secrets), Poll>>,
    /// What a (HEAD) digest resolved to: the manifest digest the pods pin and its kind.
    described: Mutex<HashMap<String, Resolved>>,
}

type Secrets = Vec<(String, String)>;
/// The last answer for one reference: a digest, or why there was none.
type Poll =
    std::sync::Arc<tokio::sync::Mutex<Option<(std::time::Instant, Result<String, ResolveError>)>>>;

/// How long a failed poll's answer is shared: those waiting on a registry that is down get
/// its error at once instead of each waiting out its own timeout in turn.
const FAILURE_SHARED_FOR: std::time::Duration = std::time::Duration::from_secs(5);

// Not derived: the cache's keys are the pull secrets' contents.
impl std::fmt::Debug for OciResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciResolver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Distinct credential sets kept; past this the cache starts over (secrets that changed
/// leave their old entries behind).
const MAX_CACHED_REGISTRIES: usize = 64;
/// Tags polled and digests described that are kept; past this each cache starts over.
const MAX_CACHED_RESOLVES: usize = 16_384;

impl OciResolver {
    /// A resolver whose answer for a tag is shared for `fresh_for` (half the resolve
    /// interval: a moved tag is seen within 1.5 intervals).
    pub fn new(config: RegistryConfig, fresh_for: std::time::Duration) -> Self {
        OciResolver {
            config,
            fresh_for,
            ..OciResolver::default()
        }
    }

    /// What `reference` names: its digest asked at most once per `fresh_for` for everyone,
    /// a digest's manifest read once.
    async fn resolve_shared(
        &self,
        registry: &Registry,
        module: &Module,
        reference: &str,
        secrets: &Secrets,
    ) -> Result<Resolved, ResolveError> {
        let slot = {
            let mut polls = self.polls.lock().unwrap_or_else(|p| p.into_inner());
            if polls.len() >= MAX_CACHED_RESOLVES {
                polls.clear();
            }
            polls
                .entry((reference.to_owned(), secrets.clone()))
                .or_default()
                .clone()
        };
        // Held across the requests: others resolving the same meanwhile wait for the answer.
        let mut last = slot.lock().await;
        let current = match last.as_ref() {
            Some((at, Ok(digest))) if at.elapsed() < self.fresh_for => digest.clone(),
            Some((at, Err(e))) if at.elapsed() < self.fresh_for.min(FAILURE_SHARED_FOR) => {
                return Err(e.clone());
            }
            _ => {
                let answer = registry
                    .current_digest(reference)
                    .await
                    .map_err(|e| translate(&e));
                *last = Some((std::time::Instant::now(), answer.clone()));
                answer?
            }
        };
        let known = self
            .described
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&current)
            .cloned();
        if let Some(resolved) = known {
            return Ok(resolved);
        }
        // A digest not seen before: its manifest, checked to be that digest and to carry
        // WebAssembly, and what its config says it serves.
        let described = registry
            .describe(&format!("{}@{current}", module.registry))
            .await
            .map_err(|e| translate(&e))?;
        let kind = match described.serves_http() {
            Some(true) => ModuleKind::Http,
            Some(false) => ModuleKind::Cli,
            None => ModuleKind::Unknown,
        };
        let resolved = Resolved {
            digest: described.resolved.digest,
            kind,
        };
        let mut cache = self.described.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_RESOLVES {
            cache.clear();
        }
        cache.insert(current, resolved.clone());
        Ok(resolved)
    }

    fn registry(&self, pull_secrets: Secrets) -> Registry {
        let mut cached = self.registries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = cached.get(&pull_secrets) {
            return r.clone();
        }
        if cached.len() >= MAX_CACHED_REGISTRIES {
            cached.clear();
        }
        let registry = Registry::new(RegistryOptions {
            credentials: Credentials {
                explicit: None,
                pull_secrets: pull_secrets.clone(),
                // Never the operator's own docker config: only what the object grants.
                docker_config: DockerConfigSource::Ignored,
            },
            config: self.config.clone(),
        });
        cached.insert(pull_secrets, registry.clone());
        registry
    }
}

/// `registry:tag`, or `registry@digest` when pinned.
pub fn reference(module: &Module) -> String {
    match (&module.digest, &module.tag) {
        (Some(d), _) => format!("{}@{d}", module.registry),
        (None, Some(t)) => format!("{}:{t}", module.registry),
        (None, None) => module.registry.clone(),
    }
}

pub fn translate(e: &wa8s_oci::Error) -> ResolveError {
    use wa8s_oci::Error as E;
    let reason = match e {
        E::NotFound { .. } => "TagNotFound",
        E::Auth { .. } => "AuthFailed",
        E::Credentials(_) => "BadPullSecret",
        E::Artifact { .. } | E::NotWasm(_) => "NotAComponent",
        E::Digest { .. } => "DigestMismatch",
        E::Reference { .. } => "InvalidReference",
        E::Refused { .. } => "RegistryNotAllowed",
        E::Config { .. } => "BadRegistryConfig",
        E::Registry { .. } | E::Transport { .. } | E::Io { .. } => "RegistryUnavailable",
    };
    ResolveError {
        reason,
        // The edge to the object's status: the error and its causes, once.
        message: wa8s_api::report::report(e),
        transient: e.is_transient(),
    }
}

#[async_trait::async_trait]
impl Resolve for OciResolver {
    async fn resolve(
        &self,
        module: &Module,
        pull_secrets: Vec<(String, String)>,
    ) -> Result<(String, Resolved), ResolveError> {
        let registry = self.registry(pull_secrets.clone());
        let reference = reference(module);
        let resolved = self
            .resolve_shared(&registry, module, &reference, &pull_secrets)
            .await?;
        Ok((reference, resolved))
    }
}
