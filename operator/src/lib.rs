//! The wa8s operator: reconciles `WebAssembly` objects into a Deployment (RuntimeClass
//! `wa8s`), a Service and an HPA.
//!
//! [`desired`] is the pure heart: (object, resolved module, config) → objects.

pub mod desired;
