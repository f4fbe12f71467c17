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
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
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
    /// A grant cannot be applied (e.g. a preopened directory does not exist).
    #[error("grant {what}: {reason}")]
    Grant {
        /// The grant.
        what: String,
        /// Why it cannot be applied.
        reason: String,
    },
    /// The engine could not be created or a precompiled artifact not loaded.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The guest trapped (out-of-bounds access, stack exhaustion, unreachable, …).
    #[error("guest trapped: {0}")]
    Trap(String),
    /// The guest ran past its deadline and was interrupted.
    #[error("guest exceeded its deadline of {0:?} and was stopped")]
    Deadline(Duration),
    /// The listen address could not be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The component could not be read from the node's blob cache.
    #[error("reading the component: {0}")]
    Component(#[source] wa8s_oci::Error),
    /// Other I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Renders a Wasmtime error with its causes on one line.
pub(crate) fn chain(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.dedup();
    parts.join(": ")
}
