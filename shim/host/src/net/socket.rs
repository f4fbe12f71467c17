//! The check wasi:sockets runs before every connect, send and bind.

use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::sockets::SocketAddrUse;

use super::{Learned, NetworkPolicy};

/// Opens wasi:sockets for a guest whose policy grants any network. Sockets see addresses
/// only: an address is reachable when a rule names it (or is `*`), or when a granted name
/// resolved to it in this instance. Binds are allowed just for the ephemeral wildcard a client
/// socket needs; nothing may listen.
pub(crate) fn open_sockets(
    b: &mut WasiCtxBuilder,
    policy: &NetworkPolicy,
    learned: &Learned,
    telemetry: &crate::Telemetry,
) {
    if !policy.is_open() {
        return;
    }
    let network = policy.clone();
    let learned = learned.clone();
    let telemetry = telemetry.clone();
    b.allow_tcp(true)
        .allow_udp(true)
        .allow_ip_name_lookup(true)
        .socket_addr_check(move |addr, use_| {
            let (ip, port) = (addr.ip(), addr.port());
            let (allowed, proto) = match use_ {
                SocketAddrUse::TcpConnect => (
                    network.socket_allowed("tcp", ip, port)
                        || learned.allows(&network, "tcp", ip, port),
                    "tcp",
                ),
                SocketAddrUse::UdpSend => (
                    network.socket_allowed("udp", ip, port)
                        || learned.allows(&network, "udp", ip, port),
                    "udp",
                ),
                SocketAddrUse::TcpBind => (ip.is_unspecified() && port == 0, "tcp bind"),
                SocketAddrUse::UdpBind => (ip.is_unspecified() && port == 0, "udp bind"),
                _ => (false, "socket"),
            };
            if !allowed {
                telemetry.deny(crate::Denial::Socket { proto, addr });
            }
            Box::pin(async move { allowed })
        });
}
