//! Errors at the host boundary. Callers translate them at their edges (exit codes, HTTP
//! statuses, container termination messages).

use std::time::Duration;

/// Everything that can go wrong loading or running a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input has no bytes.
    #[error("the file is empty: expected a WebAssembly component or core module")]
    Empty,
    /// The input is not WebAssembly at all.
    #[error("not a WebAssembly binary (it starts with {0})")]
    NotWasm(String),
    /// The input is WebAssembly but does not validate or compile.
    #[error("invalid WebAssembly")]
    Invalid(#[source] wasmtime::Error),
    /// A core module that is not a preview1 command.
    #[error("core module without a _start export: wa8s runs WASI preview1 commands and components")]
    NoStart,
    /// A component needs an import this host does not provide.
    #[error(
        "component imports {0}, which this host does not provide (it provides wasi:cli, wasi:io, wasi:clocks, wasi:filesystem, wasi:random, wasi:sockets and wasi:http 0.2)"
    )]
    UnsatisfiedImport(String),
    /// A component with neither entry point wa8s knows.
    #[error(
        "component exports neither wasi:http/incoming-handler nor wasi:cli/run (its exports: {0})"
    )]
    NoEntryPoint(String),
    /// The program is of a kind the caller cannot run that way (e.g. serving a cli component).
    #[error("{0}")]
    WrongKind(String),
    /// A grant cannot be applied (e.g. a host pattern that does not parse).
    #[error("grant {what}: {reason}")]
    Grant {
        /// The grant.
        what: String,
        /// Why it cannot be applied.
        reason: String,
    },
    /// A granted directory cannot be opened for the guest.
    #[error("grant directory {guest}: cannot open {}", host.display())]
    Preopen {
        /// The path the guest sees.
        guest: String,
        /// The node's directory.
        host: std::path::PathBuf,
        /// Wasmtime's reason.
        #[source]
        source: wasmtime::Error,
    },
    /// A problem of the host's own making (a setting, a cache record).
    #[error("wasm engine: {0}")]
    Engine(String),
    /// Wasmtime refused an operation of the host's (creating the engine, linking WASI,
    /// loading a precompiled artifact).
    #[error("wasm engine: {doing}")]
    Wasmtime {
        /// What the host was doing.
        doing: String,
        /// Wasmtime's reason.
        #[source]
        source: wasmtime::Error,
    },
    /// The guest trapped (out-of-bounds access, stack exhaustion, unreachable, …).
    #[error("guest trapped")]
    Trap(#[source] wasmtime::Error),
    /// The guest stopped after its memory limit refused a growth (its allocator gives up by
    /// trapping): reported as what to change, not as the trap.
    #[error("{refusal}, then it stopped")]
    OutOfMemory {
        /// Which limit refused how much.
        refusal: crate::memory::Refusal,
        /// The trap that followed.
        #[source]
        source: wasmtime::Error,
    },
    /// The guest ran past its deadline and was interrupted.
    #[error("guest exceeded its deadline of {0:?} and was stopped")]
    Deadline(Duration),
    /// The guest was stopped because the server is shutting down.
    #[error("stopped: the server shut down")]
    ShutDown,
    /// An HTTP guest returned without setting a response.
    #[error("the guest returned without setting a response")]
    NoResponse,
    /// The task running the guest failed outside Wasm (a host panic).
    #[error("guest task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The listen address could not be bound.
    #[error("listening on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The component could not be read from the node's blob cache.
    #[error("reading the component")]
    Component(#[source] wa8s_oci::Error),
    /// Other I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A wasmtime failure in something the host was doing.
    pub(crate) fn wasmtime(doing: impl Into<String>) -> impl FnOnce(wasmtime::Error) -> Error {
        let doing = doing.into();
        move |source| Error::Wasmtime { doing, source }
    }

    /// Whether the guest itself ended this way (a trap, its memory limit), as opposed to the
    /// host or the program's shape: exit codes and metrics count these apart.
    pub fn is_trap(&self) -> bool {
        matches!(self, Error::Trap(_) | Error::OutOfMemory { .. })
    }
}
