//! What a guest may touch. Everything is denied unless listed here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wa8s_api::contract;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::{Error, MemoryBudget, NetworkPolicy, TrustRoots};

/// Capabilities and limits for one guest (all instances of one program share them).
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// `argv` (the first entry is the program name).
    pub args: Vec<String>,
    /// Exactly the environment the guest sees.
    pub env: Vec<(String, String)>,
    /// Preopened directories.
    pub dirs: Vec<DirGrant>,
    /// Outbound network.
    pub network: NetworkPolicy,
    /// What a guest's https requests trust.
    pub trust: TrustRoots,
    /// Resource limits.
    pub limits: Limits,
    /// Where guest stdout goes.
    pub stdout: Stdio,
    /// Where guest stderr goes.
    pub stderr: Stdio,
    /// Where requests, stops and denials are counted (and denials written to the log).
    pub telemetry: crate::Telemetry,
}

/// A host directory preopened in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// Directory on the host (or in the container's rootfs).
    pub host: PathBuf,
    /// Absolute path the guest sees.
    pub guest: String,
    /// Every write fails in the guest.
    pub read_only: bool,
    /// Bound on the bytes held by files in the directory (`maxSize`); a write past it
    /// fails in the guest with ENOSPC.
    pub max_bytes: Option<u64>,
    /// The directory is a file system of `max_bytes` (the shim's bounded volume): the kernel
    /// enforces the bound, and the host only checks the file system's free space so a write
    /// past it fails at once with ENOSPC, before any byte of it is taken, rather than part-way
    /// (when a file stream would close). Without it, the host measures the directory.
    pub bound_by_kernel: bool,
}

/// Limits for each instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Cap on the bytes of all linear memories and tables of one instance together; growth
    /// past it fails in the guest.
    pub memory_bytes: Option<u64>,
    /// A budget all instances of the process share (e.g. the container's memory less the
    /// runtime's own); growth past it fails in the guest that asked.
    pub budget: Option<MemoryBudget>,
    /// Wall-clock deadline for one request (or a whole cli run, if set).
    pub timeout: Option<Duration>,
    /// Requests served at once; more wait.
    pub max_concurrent_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: None,
            budget: None,
            timeout: None,
            max_concurrent_requests: contract::DEFAULT_MAX_CONCURRENT_REQUESTS as usize,
        }
    }
}

/// Where a guest output stream goes.
#[derive(Debug, Clone, Default)]
pub enum Stdio {
    /// Discarded.
    #[default]
    Null,
    /// The host process's own stream.
    Inherit,
    /// A file (e.g. containerd's stdio FIFO).
    File(Arc<std::fs::File>),
    /// Kept in memory (tests, captured output).
    Capture(Capture),
}

/// Captured guest output.
#[derive(Debug, Clone)]
pub struct Capture(pub(crate) MemoryOutputPipe);

impl Capture {
    /// A capture buffer holding up to `capacity` bytes; a guest writing more traps.
    pub fn new(capacity: usize) -> Self {
        Capture(MemoryOutputPipe::new(capacity))
    }

    /// What the guest wrote so far.
    pub fn contents(&self) -> Vec<u8> {
        self.0.contents().to_vec()
    }
}

impl Grants {
    /// Checks grants before anything runs, so mistakes surface as clear errors at start.
    pub fn validate(&self) -> Result<(), Error> {
        for d in &self.dirs {
            if !d.guest.starts_with('/') {
                return Err(Error::Grant {
                    what: format!("directory {}", d.guest),
                    reason: "the guest path must be absolute".into(),
                });
            }
            if !d.host.is_dir() {
                return Err(Error::Grant {
                    what: format!("directory {}", d.guest),
                    reason: format!("{} is not a directory on the host", d.host.display()),
                });
            }
        }
        Ok(())
    }
}
