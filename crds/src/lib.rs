//! The wa8s API: the `WebAssembly` custom resource (`wa8s.reconciler.io/v1`) and the small,
//! versioned pod contract the operator writes and the shim reads.
//!
//! This crate is the one place both sides import, so the CRD schema, its validation rules and
//! the contract cannot drift apart. It has no IO: types, pure conversions, and the generated
//! CRD document.

pub mod address;
pub mod contract;
pub mod crd;
pub mod grammar_examples;
pub mod host_pattern;
pub mod quantity;
pub mod report;
pub mod webassembly;

pub use quantity::Quantity;
pub use webassembly::*;
