//! The wa8s Wasm host: every Wasmtime call wa8s makes lives in this crate.
//!
//! It loads a binary ([`Program::load`]), decides what it is (a `wasi:http` component, a
//! `wasi:cli` component, or a preview1 command module) and runs it under [`Grants`] that
//! deny everything not granted: no files, no environment, no network. The containerd shim
//! and the `wa8s run` command both use it, so a component behaves the same on a laptop and in
//! a pod. No containerd or Kubernetes types appear here.

mod engine;
mod error;
mod grants;
mod memory;
mod net;
mod precache;
mod program;
mod quota;
mod run;
mod serve;
mod state;
mod telemetry;
mod traces;

pub use engine::{EngineConfig, HostEngine, WASMTIME_VERSION};
pub use error::Error;
pub use grants::{Capture, DirGrant, Grants, Limits, Stdio};
pub use memory::{MemoryBudget, Refusal};
pub use net::{Follow, NetworkPolicy, NodeAddresses, TrustRoots};
pub use precache::{PrecompileCache, Source};
pub use program::{Kind, Program};
#[doc(hidden)] // for the test that holds the host to one walk per bound per start
pub use quota::directory_walks;
pub use run::ExitStatus;
pub use serve::{ServeOptions, ServeStats, Server, serve_metrics};
pub use telemetry::{Denial, DenialKind, OPENMETRICS_CONTENT_TYPE, Telemetry};
pub use traces::TracesError;
