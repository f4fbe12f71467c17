//! What a guest may touch. Everything is denied unless listed here.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wa8s_api::contract;
use wa8s_api::host_pattern::{HostRule, is_restricted};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::Error;

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
    /// Resource limits.
    pub limits: Limits,
    /// Where guest stdout goes.
    pub stdout: Stdio,
    /// Where guest stderr goes.
    pub stderr: Stdio,
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
}

/// Limits for each instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Linear-memory cap per memory, in bytes; `memory.grow` past it fails in the guest.
    pub memory_bytes: Option<u64>,
    /// Wall-clock deadline for one request (or a whole cli run, if set).
    pub timeout: Option<Duration>,
    /// Requests served at once; more wait.
    pub max_concurrent_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: None,
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

/// Outbound network grants: which hosts, and which addresses stay blocked.
#[derive(Debug, Clone, Default)]
pub struct NetworkPolicy {
    rules: Vec<HostRule>,
    /// The node's own addresses: blocked like loopback unless listed literally.
    blocked: Vec<IpAddr>,
}

impl NetworkPolicy {
    /// Parses allowedHosts patterns (the CRD's syntax). Empty denies all outbound traffic.
    pub fn new<S: AsRef<str>>(patterns: &[S], blocked: Vec<IpAddr>) -> Result<Self, Error> {
        let rules = patterns
            .iter()
            .map(|p| {
                p.as_ref().parse::<HostRule>().map_err(|e| Error::Grant {
                    what: "allowed host".into(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(NetworkPolicy { rules, blocked })
    }

    /// Whether any outbound traffic is granted.
    pub fn is_open(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The rule allowing `scheme://host:port` by name, if any.
    pub fn rule_for(&self, scheme: &str, host: &str, port: u16) -> Option<&HostRule> {
        self.rules.iter().find(|r| r.allows(scheme, host, port))
    }

    /// Whether `ip` may be connected to after `rule` matched the name it came from.
    /// Loopback, link-local, unspecified and node addresses need the rule to name that very
    /// address; so a name cannot be pointed (by DNS) at them.
    pub fn address_allowed(&self, rule: &HostRule, ip: IpAddr) -> bool {
        if rule.literal_ip() == Some(ip) {
            return true;
        }
        !(is_restricted(ip) || self.blocked.contains(&ip))
    }

    /// Whether the guest may resolve `name`: some rule matches it, whatever its port and
    /// scheme.
    pub fn may_resolve(&self, name: &str) -> bool {
        self.rules.iter().any(|r| r.matches_host(name))
    }

    /// Whether a socket for `proto` may reach `ip:port` because the granted `name` resolved
    /// to `ip`.
    pub fn name_allowed(&self, proto: &str, name: &str, port: u16, ip: IpAddr) -> bool {
        self.rules
            .iter()
            .any(|r| r.allows(proto, name, port) && self.address_allowed(r, ip))
    }

    /// Whether a raw socket connection (`tcp`/`udp`) to `ip:port` is allowed. Sockets see
    /// only addresses, so only IP-literal rules and `*` can match them.
    pub fn socket_allowed(&self, proto: &str, ip: IpAddr, port: u16) -> bool {
        self.rules
            .iter()
            .any(|r| r.allows(proto, &ip.to_string(), port) && self.address_allowed(r, ip))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_sockets_reach_only_literal_or_wildcard_public_addresses() {
        let p = NetworkPolicy::new(
            &["10.0.0.7:5432", "tcp://*:443", "db.internal.example.com"],
            vec!["10.1.1.1".parse().expect("ip")],
        )
        .expect("patterns");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(p.socket_allowed("tcp", ip("10.0.0.7"), 5432));
        assert!(!p.socket_allowed("tcp", ip("10.0.0.7"), 5433));
        assert!(p.socket_allowed("tcp", ip("93.184.216.34"), 443));
        assert!(!p.socket_allowed("udp", ip("93.184.216.34"), 443));
        // Restricted and node addresses stay blocked even under a wildcard.
        assert!(!p.socket_allowed("tcp", ip("127.0.0.1"), 443));
        assert!(!p.socket_allowed("tcp", ip("169.254.169.254"), 443));
        assert!(!p.socket_allowed("tcp", ip("10.1.1.1"), 443));
        // A name pattern cannot match a bare address.
        assert!(!p.socket_allowed("tcp", ip("10.0.0.8"), 5432));
    }

    #[test]
    fn no_patterns_means_no_network() {
        let p = NetworkPolicy::new::<&str>(&[], Vec::new()).expect("empty");
        assert!(!p.is_open());
        assert!(!p.socket_allowed("tcp", "93.184.216.34".parse().expect("ip"), 80));
    }

    #[test]
    fn a_malformed_pattern_is_a_grant_error() {
        let err = NetworkPolicy::new(&["exa mple.com"], Vec::new()).expect_err("refused");
        assert!(err.to_string().contains("is not a host pattern"), "{err}");
    }
}
