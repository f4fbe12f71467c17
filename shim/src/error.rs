//! The shim's errors, translated to ttrpc status codes at the task-service edge so
//! containerd (and the kubelet's CreateContainerError) show the reason.

use containerd_shim::protos::ttrpc::{self, Code};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    Spec(#[from] crate::spec::Error),
    #[error(transparent)]
    Component(#[from] crate::component::Error),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::Error),
    /// The guest process refused to run (unusable component, bad grant).
    #[error("{0}")]
    Guest(String),
    #[error("{0}")]
    Setup(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::Precondition(_) => Code::FAILED_PRECONDITION,
            Error::Spec(_) | Error::Guest(_) => Code::INVALID_ARGUMENT,
            Error::Component(crate::component::Error::Oci(e))
                if e.reason() == "RegistryUnavailable" =>
            {
                Code::UNAVAILABLE
            }
            Error::Component(_) => Code::INVALID_ARGUMENT,
            Error::Cgroup(_) | Error::Setup(_) | Error::Io { .. } => Code::INTERNAL,
        }
    }

    pub fn into_ttrpc(self) -> ttrpc::Error {
        let code = self.code();
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, format!("wa8s: {self}")))
    }
}
