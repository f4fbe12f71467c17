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
#[derive(Default)]
pub struct OciResolver {
    config: RegistryConfig,
    /// Registry clients by the pull secrets they carry, reused across reconciles: each
    /// holds an HTTP client per registry (its trust roots, its connection pool), which costs
    /// more to build than a resolve and would otherwise be rebuilt every time.
    registries: Mutex<HashMap<Vec<(String, String)>, Registry>>,
}

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

impl OciResolver {
    pub fn new(config: RegistryConfig) -> Self {
        OciResolver {
            config,
            registries: Mutex::new(HashMap::new()),
        }
    }

    fn registry(&self, pull_secrets: Vec<(String, String)>) -> Registry {
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
        let registry = self.registry(pull_secrets);
        let reference = reference(module);
        let described = registry
            .describe(&reference)
            .await
            .map_err(|e| translate(&e))?;
        let kind = match described.serves_http() {
            Some(true) => ModuleKind::Http,
            Some(false) => ModuleKind::Cli,
            None => ModuleKind::Unknown,
        };
        Ok((
            reference,
            Resolved {
                digest: described.resolved.digest,
                kind,
            },
        ))
    }
}
