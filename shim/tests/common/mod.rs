//! What the ctr and CRI tests share.

use std::collections::BTreeMap;

use wa8s_api::contract::{CONTRACT_VERSION, Limits, Policy};

/// The pod-contract annotations of a policy granting env names `env` (and nothing else), 32Mi,
/// HTTP on 8080.
pub fn policy_annotations(env: &[&str]) -> BTreeMap<String, String> {
    policy(env).to_annotations()
}

/// The policy of [`policy_annotations`], for a test to grant more.
pub fn policy(env: &[&str]) -> Policy {
    Policy {
        version: CONTRACT_VERSION,
        fs: Vec::new(),
        env: env.iter().map(|s| (*s).to_owned()).collect(),
        allowed_hosts: Vec::new(),
        limits: Limits {
            memory_bytes: Some(32 << 20),
            request_timeout_ms: 30_000,
            max_concurrent_requests: 100,
        },
        port: 8080,
    }
}
