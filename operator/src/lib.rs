//! The wa8s operator: reconciles `WebAssembly` objects into a Deployment (RuntimeClass
//! `wa8s`), a Service and an HPA, and reports status that tells the truth.
//!
//! [`desired`] and [`status`] are pure functions (unit-tested and snapshot-tested);
//! [`controller`] does the I/O; `main.rs` only wires flags to these.

pub mod controller;
pub mod desired;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod resolve;
pub mod status;
