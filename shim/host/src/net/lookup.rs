//! Name lookups (wasi:sockets/ip-name-lookup) gated by the network grants.
//!
//! A guest may resolve only names some `allowedHosts` rule matches: resolving anything else
//! would already leak data to whoever runs that name's DNS. The addresses an allowed lookup
//! returns are remembered per instance, so raw sockets may connect to them under the rule
//! that allowed the name (its scheme and port); restricted addresses stay blocked unless
//! the rule names them literally. wasmtime-wasi only offers all-or-nothing lookups, so the
//! two functions are shadowed in the linker and call its implementation when allowed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::Network;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    Host as _, HostResolveAddressStream as _, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, Host as _, IpAddress};
use wasmtime_wasi::sockets::WasiSocketsView;

use super::NetworkPolicy;

/// Per-instance record of allowed lookups.
/// One instance's network state, reached by the linker extensions through a projection
/// closure (as `wasmtime serve` does) rather than through the store's other fields.
#[derive(Default)]
pub(crate) struct GuestNet {
    pub(crate) policy: NetworkPolicy,
    pub(crate) lookups: Lookups,
    pub(crate) telemetry: crate::Telemetry,
}

#[derive(Default)]
pub(crate) struct Lookups {
    /// Name looked up, by resolve-address-stream handle.
    pending: HashMap<u32, String>,
    /// Addresses handed to the guest, with the names they answered.
    pub(crate) learned: Learned,
}

/// Addresses resolved for granted names; read by the socket address check.
#[derive(Clone, Default)]
pub(crate) struct Learned(Arc<Mutex<Vec<(IpAddr, String)>>>);

impl Learned {
    fn add(&self, ip: IpAddr, name: &str) {
        let mut learned = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !learned.iter().any(|(i, n)| *i == ip && n == name) {
            learned.push((ip, name.to_owned()));
        }
    }

    /// Whether a socket for `proto` may reach `ip:port` because a granted name resolved to it.
    pub(crate) fn allows(
        &self,
        policy: &NetworkPolicy,
        proto: &str,
        ip: IpAddr,
        port: u16,
    ) -> bool {
        let learned = self.0.lock().unwrap_or_else(|p| p.into_inner());
        learned
            .iter()
            .filter(|(i, _)| *i == ip)
            .any(|(_, name)| policy.name_allowed(proto, name, port, ip))
    }
}

/// Shadows name lookup with the gated version. Call after wasmtime-wasi's own
/// `add_to_linker`, with shadowing allowed. `net` projects the store's data to its network
/// state.
pub(crate) fn add_to_linker<T: WasiView + 'static>(
    linker: &mut Linker<T>,
    net: fn(&mut T) -> &mut GuestNet,
) -> wasmtime::Result<()> {
    let mut lookup = linker.instance("wasi:sockets/ip-name-lookup@0.2.12")?;
    lookup.func_wrap(
        "resolve-addresses",
        move |mut store, (network, name): (Resource<Network>, String)| {
            let state = store.data_mut();
            if !net(state).policy.may_resolve(&name) {
                net(state)
                    .telemetry
                    .deny(crate::Denial::NameLookup { name });
                return Ok((Err(ErrorCode::AccessDenied),));
            }
            let mut view = state.sockets();
            let stream = match view.resolve_addresses(network, name.clone()) {
                Ok(s) => s,
                Err(e) => return Ok((Err(view.convert_error_code(e)?),)),
            };
            net(state).lookups.pending.insert(stream.rep(), name);
            Ok((Ok(stream),))
        },
    )?;
    lookup.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        move |mut store, (stream,): (Resource<ResolveAddressStream>,)| {
            let state = store.data_mut();
            let rep = stream.rep();
            let mut view = state.sockets();
            let next = match view.resolve_next_address(stream) {
                Ok(next) => next,
                Err(e) => return Ok((Err(view.convert_error_code(e)?),)),
            };
            let lookups = &mut net(state).lookups;
            if let (Some(addr), Some(name)) = (&next, lookups.pending.get(&rep)) {
                lookups.learned.add(ip_of(addr), name);
            }
            Ok((Ok(next),))
        },
    )?;
    Ok(())
}

fn ip_of(addr: &IpAddress) -> IpAddr {
    match *addr {
        IpAddress::Ipv4((a, b, c, d)) => IpAddr::from([a, b, c, d]),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::from([a, b, c, d, e, f, g, h]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolved_address_is_reachable_only_under_the_rule_of_its_name() {
        let policy = NetworkPolicy::new(
            &["tcp://api.example.com:443"],
            crate::NodeAddresses::default(),
        )
        .expect("ok");
        let learned = Learned::default();
        let public: IpAddr = "93.184.216.34".parse().expect("ip");
        let loopback: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!(
            !learned.allows(&policy, "tcp", public, 443),
            "nothing resolved yet"
        );
        learned.add(public, "api.example.com");
        learned.add(loopback, "api.example.com");
        assert!(learned.allows(&policy, "tcp", public, 443));
        assert!(!learned.allows(&policy, "tcp", public, 80), "another port");
        assert!(
            !learned.allows(&policy, "udp", public, 443),
            "another protocol"
        );
        assert!(
            !learned.allows(&policy, "tcp", loopback, 443),
            "a name cannot point a socket at loopback"
        );
        // An address learned for a name no rule grants stays closed.
        let other: IpAddr = "93.184.216.35".parse().expect("ip");
        learned.add(other, "evil.example.org");
        assert!(!learned.allows(&policy, "tcp", other, 443));
    }
}
