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
            Error::Component(crate::component::Error::Oci(e)) if e.is_transient() => {
                Code::UNAVAILABLE
            }
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
        // The edge to containerd: the error and its causes, once, as text.
        let message = format!("wa8s: {}", Failure::of(&self));
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: Error) -> ttrpc::Status {
        match e.into_ttrpc() {
            ttrpc::Error::RpcStatus(s) => s,
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn containerd_is_told_each_cause_once() {
        let e = Error::Component(crate::component::Error::Content(
            crate::content::Error::Unavailable {
                address: "/run/c.sock".into(),
                call: "reading the image",
                source: crate::content::Why::Said("no answer".into()),
            },
        ));
        let s = status(e);
        assert_eq!(
            s.message,
            "wa8s: containerd at /run/c.sock: reading the image: no answer"
        );
        let s = status(Error::io("reading x")(std::io::Error::other("gone")));
        assert_eq!(s.message, "wa8s: reading x: gone");
    }

    #[test]
    fn an_unreachable_registry_is_unavailable_and_other_component_errors_are_the_users() {
        let registry = wa8s_oci::Error::Registry {
            registry: "r.example".into(),
            reason: "connection refused".into(),
        };
        let s = status(Error::Component(registry.into()));
        assert_eq!(s.code, Code::UNAVAILABLE.into());
        let s = status(Error::Component(crate::component::Error::Missing(
            "nothing".into(),
        )));
        assert_eq!(s.code, Code::INVALID_ARGUMENT.into());
    }

    #[test]
    fn a_refused_phase_change_is_a_failed_precondition() {
        let e = containers::Error::Refused {
            id: "a".into(),
            source: containers::Refused {
                phase: "running",
                action: "deleted",
            },
        };
        let s = status(e.into());
        assert_eq!(s.code, Code::FAILED_PRECONDITION.into());
        assert_eq!(
            s.message,
            "wa8s: container a: it is running and cannot be deleted"
        );
    }
}
