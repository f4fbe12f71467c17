//! The error of starting and stopping the local cluster's parts (control plane, node).

use crate::{binaries, pki};

/// Errors while starting or stopping the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binaries could not be built or found.
    #[error(transparent)]
    Binaries(#[from] binaries::Error),
    /// The PKI could not be created.
    #[error(transparent)]
    Pki(#[from] pki::Error),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A component exited or did not become healthy in time.
    #[error("{component} {outcome}; last lines of {log}:\n{tail}")]
    NotHealthy {
        /// etcd, kube-apiserver or kube-controller-manager.
        component: &'static str,
        /// "exited during startup" or "was not healthy within …".
        outcome: String,
        /// Its log file.
        log: String,
        /// The end of its log.
        tail: String,
    },
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
