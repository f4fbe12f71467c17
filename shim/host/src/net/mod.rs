//! The network gate: every way a guest reaches the network passes through this module.
//!
//! - [`policy`]: `allowedHosts` as typed rules, and which addresses they open;
//! - [`node`]: the node's own addresses, kept current;
//! - [`lookup`]: wasi:sockets name lookups, allowed only for granted names;
//! - [`socket`]: the address check wasi:sockets calls before every connect and send;
//! - [`http`]: outgoing wasi:http requests, connected to the checked address;
//! - [`tls`]: what a guest's https requests trust.

mod http;
mod lookup;
mod node;
mod policy;
mod socket;
mod tls;

pub use node::{Follow, NodeAddresses};
pub use policy::NetworkPolicy;
pub use tls::TrustRoots;

pub(crate) use http::OutboundHttp;
pub(crate) use lookup::{GuestNet, Learned, add_to_linker};
pub(crate) use socket::open_sockets;
