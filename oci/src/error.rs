//! Errors at the OCI boundary.

/// What went wrong talking to a registry or reading an artifact.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reference cannot be parsed.
    #[error("invalid reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    /// Bytes that are not WebAssembly where a Wasm binary was expected.
    #[error("not a WebAssembly binary: {0}")]
    NotWasm(String),
    /// The manifest does not describe a Wasm component wa8s can run.
    #[error("{reference}: {reason}")]
    Artifact { reference: String, reason: String },
    /// Content did not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    /// The registry refused the credentials (or demanded some).
    #[error("{registry}: authentication failed: {reason}")]
    Auth { registry: String, reason: String },
    /// The reference (repository, tag or digest) does not exist.
    #[error("{reference}: not found in the registry")]
    NotFound { reference: String },
    /// The registry answered with an error (its HTTP status, its OCI error codes).
    #[error("{registry}: {reason}")]
    Registry { registry: String, reason: String },
    /// The registry could not be reached, or the exchange broke off (connection, TLS, a
    /// stream cut short). The cause is kept as it came from the HTTP client.
    #[error("{registry}: {doing}")]
    Transport {
        registry: String,
        doing: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The address policy refused a request: the registry, a redirect or a token realm
    /// points at an address this deployment does not let registry requests reach.
    #[error("{registry}: refused by the registry address policy: {reason}")]
    Refused { registry: String, reason: String },
    /// A registry setting (flag or node configuration) is unusable.
    #[error("{setting}: {reason}")]
    Config { setting: String, reason: String },
    /// Credentials configuration (docker config, credential helper) is unusable.
    #[error("credentials: {0}")]
    Credentials(String),
    /// Local file system trouble (cache, output file).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    /// Whether trying again later may succeed without anyone changing anything (the
    /// registry is down or unreachable, the local disk had trouble), as opposed to a
    /// reference, credentials or content someone must fix.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Registry { .. } | Error::Transport { .. } | Error::Io { .. }
        )
    }

    /// A short, stable label for the kind of failure (metrics, conditions).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Reference { .. } => "InvalidReference",
            Error::NotWasm(_) => "NotWasm",
            Error::Artifact { .. } => "UnsupportedArtifact",
            Error::Digest { .. } => "DigestMismatch",
            Error::Auth { .. } => "AuthFailed",
            Error::NotFound { .. } => "NotFound",
            Error::Registry { .. } | Error::Transport { .. } => "RegistryUnavailable",
            Error::Refused { .. } => "RegistryNotAllowed",
            Error::Config { .. } => "BadRegistryConfig",
            Error::Credentials(_) => "BadCredentials",
            Error::Io { .. } => "LocalIO",
        }
    }
}
