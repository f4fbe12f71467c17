//! The shim's errors, translated to ttrpc status codes at the task-service edge so
//! containerd (and the kubelet's CreateContainerError) show the reason.

use std::time::Duration;

use containerd_shim::protos::ttrpc::{self, Code};

use crate::containers;
use crate::protocol::{self, Failure};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Table(#[from] containers::Error),
    #[error(transparent)]
    Spec(#[from] crate::spec::Error),
    #[error(transparent)]
    Component(#[from] crate::component::Error),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::Error),
    /// The guest process refused to run (unusable component, bad grant).
    #[error(transparent)]
    Guest(Failure),
    /// The precompile process could not compile the component.
    #[error(transparent)]
    Precompile(Failure),
    #[error("compiling the component failed: the process was killed")]
    PrecompileKilled,
    #[error("the node's precompile cache does not hold {0} right after compiling it")]
    StillUncompiled(String),
    #[error(
        "the guest process ran out of memory while starting (the container's limit is {limit} bytes)"
    )]
    GuestOutOfMemory { limit: u64 },
    #[error("the guest process exited before it was ready")]
    GuestExited,
    #[error("the guest process did not get ready within {0:?}")]
    NotReady(Duration),
    /// A process of the shim's own said something the protocol does not know.
    #[error(transparent)]
    Protocol(#[from] protocol::Error),
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
            Error::Table(containers::Error::NotFound(_)) => Code::NOT_FOUND,
            Error::Table(containers::Error::AlreadyExists(_)) => Code::ALREADY_EXISTS,
            Error::Table(containers::Error::Refused { .. }) => Code::FAILED_PRECONDITION,
            Error::Spec(_)
            | Error::Guest(_)
            | Error::Precompile(_)
            | Error::PrecompileKilled
            | Error::StillUncompiled(_)
            | Error::GuestOutOfMemory { .. }
            | Error::GuestExited => Code::INVALID_ARGUMENT,
            Error::Component(crate::component::Error::Oci(wa8s_oci::Error::Registry {
                ..
            })) => Code::UNAVAILABLE,
            Error::Component(_) => Code::INVALID_ARGUMENT,
            Error::Cgroup(_)
            | Error::NotReady(_)
            | Error::Protocol(_)
            | Error::Setup(_)
            | Error::Io { .. } => Code::INTERNAL,
        }
    }

    pub fn into_ttrpc(self) -> ttrpc::Error {
        let code = self.code();
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, format!("wa8s: {self}")))
    }
}
