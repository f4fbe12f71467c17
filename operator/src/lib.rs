//! The wa8s operator: reconciles `WebAssembly` objects into a Deployment (RuntimeClass
//! `wa8s`), a Service and an HPA, and reports status that tells the truth.
//!
//! [`desired`] and [`status`] are pure functions (unit-tested and snapshot-tested);
//! [`controller`] does the I/O; `main.rs` only wires flags to these.

pub mod controller;
pub mod desired;
#[cfg(test)]
mod fixtures;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod resolve;
pub mod status;
pub mod triggers;

/// Picks rustls's crypto provider for the process. Two are linked (kube uses ring; the
/// registry client's reqwest brings aws-lc-rs), and rustls refuses to guess, so the binary
/// and tests call this before any TLS. Calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
