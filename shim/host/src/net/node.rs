//! The node's own addresses, kept current. A guest runs in its pod's network namespace, where
//! the node's interfaces are invisible, so the list comes from a route-netlink socket opened in
//! the node's namespace (by the shim, before the guest leaves it): the socket keeps talking to
//! the namespace it was created in. The list is read once, then again whenever the kernel
//! announces an address change (DHCP renewals, IPv6 temporary addresses, new interfaces).

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, RwLock};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};

use wa8s_api::address::same_host;

/// Addresses blocked like loopback unless a rule names them literally: the node's own.
#[derive(Clone, Default)]
pub struct NodeAddresses(Arc<RwLock<Arc<[IpAddr]>>>);

impl std::fmt::Debug for NodeAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.current().iter()).finish()
    }
}

const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

impl NodeAddresses {
    /// A fixed list (tests, or a caller that knows better).
    pub fn fixed(addresses: Vec<IpAddr>) -> Self {
        NodeAddresses(Arc::new(RwLock::new(addresses.into())))
    }

    /// A route-netlink socket in the current network namespace, subscribed to address
    /// changes: hand it to [`NodeAddresses::watch`], possibly in another process or namespace.
    pub fn open_netlink() -> io::Result<OwnedFd> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &NetlinkAddr::new(0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR),
        )?;
        Ok(fd)
    }

    /// The addresses of the namespace `socket` (from [`NodeAddresses::open_netlink`]) was
    /// opened in, read now; [`Follow::start`] keeps them current from a thread of its own
    /// (a separate step, for a process that must stay single-threaded a while longer).
    pub fn watch(socket: OwnedFd) -> io::Result<(Self, Follow)> {
        let first = dump(&socket, 1)?;
        let nodes = NodeAddresses::fixed(first);
        let follow = Follow {
            socket,
            nodes: nodes.clone(),
        };
        Ok((nodes, follow))
    }

    /// This machine's addresses (the current network namespace's), kept current.
    pub fn of_this_namespace() -> io::Result<Self> {
        let (nodes, follow) = Self::watch(Self::open_netlink()?)?;
        follow.start()?;
        Ok(nodes)
    }

    /// The addresses as last read.
    pub fn current(&self) -> Arc<[IpAddr]> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether `ip`, in any of its forms, is one of the node's addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.current().iter().any(|n| same_host(*n, ip))
    }

    fn replace(&self, addresses: Vec<IpAddr>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = addresses.into();
    }
}

/// Keeps a [`NodeAddresses`] current once started.
#[derive(Debug)]
pub struct Follow {
    socket: OwnedFd,
    nodes: NodeAddresses,
}

impl Follow {
    /// Starts the thread that re-reads the addresses on every change, for the life of the
    /// process.
    pub fn start(self) -> io::Result<()> {
        std::thread::Builder::new()
            .name("wa8s-node-addresses".into())
            .spawn(move || follow(&self.socket, &self.nodes))?;
        Ok(())
    }
}

fn follow(socket: &OwnedFd, nodes: &NodeAddresses) {
    let mut buf = vec![0u8; 64 * 1024];
    for seq in 2u32.. {
        // Any message (an announcement, or an overrun error) means: read the list again.
        match recv(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            &mut buf,
            MsgFlags::empty(),
        ) {
            Ok(_) | Err(nix::errno::Errno::ENOBUFS) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("node addresses are no longer followed: {e}");
                return;
            }
        }
        match dump(socket, seq) {
            Ok(addresses) => {
                tracing::debug!(?addresses, "node addresses changed");
                nodes.replace(addresses);
            }
            Err(e) => tracing::warn!("re-reading the node's addresses: {e}"),
        }
    }
}

/// Asks for every address of the namespace and reads the answer (announcements arriving in
/// between are skipped: the dump already reflects them, or the next one will).
fn dump(socket: &impl AsFd, seq: u32) -> io::Result<Vec<IpAddr>> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket.as_fd());
    let mut request = Vec::with_capacity(24);
    request.extend_from_slice(&24u32.to_ne_bytes());
    request.extend_from_slice(&RTM_GETADDR.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&seq.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&[0u8; 8]); // ifaddrmsg: any family
    send(fd, &request, MsgFlags::empty())?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match recv(fd, &mut buf, MsgFlags::empty()) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => r?,
        };
        for (kind, msg_seq, body) in messages(&buf[..n]) {
            if msg_seq != seq {
                continue;
            }
            match kind {
                NLMSG_DONE => {
                    out.sort();
                    out.dedup();
                    return Ok(out);
                }
                NLMSG_ERROR => {
                    let errno = body
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0);
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                RTM_NEWADDR => out.extend(address_of(body)),
                _ => {}
            }
        }
    }
}

/// `(type, seq, payload)` of each netlink message in a datagram.
fn messages(mut data: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    std::iter::from_fn(move || {
        let header = data.get(..16)?;
        let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len < 16 || len > data.len() {
            return None;
        }
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        let seq = u32::from_ne_bytes([header[8], header[9], header[10], header[11]]);
        let body = &data[16..len];
        data = &data[align(len).min(data.len())..];
        Some((kind, seq, body))
    })
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// The interface's own address in an `RTM_NEWADDR` payload (`IFA_LOCAL` where the kernel gives
/// one: on point-to-point links `IFA_ADDRESS` is the peer).
fn address_of(body: &[u8]) -> Option<IpAddr> {
    let family = *body.first()?;
    let mut attrs = body.get(8..)?;
    let (mut address, mut local) = (None, None);
    while let Some(head) = attrs.get(..4) {
        let len = u16::from_ne_bytes([head[0], head[1]]) as usize;
        let kind = u16::from_ne_bytes([head[2], head[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        let value = &attrs[4..len];
        let ip = match (family as i32, value.len()) {
            (libc_af::INET, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(value).ok()?)),
            (libc_af::INET6, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(value).ok()?)),
            _ => None,
        };
        match kind {
            IFA_ADDRESS => address = ip,
            IFA_LOCAL => local = ip,
            _ => {}
        }
        attrs = &attrs[align(len).min(attrs.len())..];
    }
    local.or(address)
}

mod libc_af {
    pub(super) const INET: i32 = 2;
    pub(super) const INET6: i32 = 10;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_namespace_lists_its_loopback_in_every_form() {
        let nodes = NodeAddresses::of_this_namespace().expect("route netlink");
        assert!(
            nodes.contains("127.0.0.1".parse().expect("ip")),
            "{nodes:?}"
        );
        assert!(nodes.contains("::ffff:127.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn an_address_added_later_is_blocked_and_one_removed_is_not() {
        // In a network namespace of this test's own (namespaces are per thread), so the
        // machine's interfaces are not touched.
        let result = std::thread::spawn(|| -> Result<(), String> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
            let ip = |args: &[&str]| {
                let out = std::process::Command::new("ip").args(args).output();
                match out {
                    Ok(o) if o.status.success() => Ok(()),
                    Ok(o) => Err(format!(
                        "ip {args:?}: {}",
                        String::from_utf8_lossy(&o.stderr)
                    )),
                    Err(e) => Err(format!("ip {args:?}: {e}")),
                }
            };
            ip(&["link", "set", "lo", "up"])?;
            let nodes = NodeAddresses::of_this_namespace().map_err(|e| e.to_string())?;
            let added: IpAddr = "10.77.0.1".parse().map_err(|_| "ip")?;
            assert!(!nodes.contains(added), "{nodes:?}");
            ip(&["addr", "add", "10.77.0.1/24", "dev", "lo"])?;
            wait_until(|| nodes.contains(added), &nodes)?;
            assert!(nodes.contains("64:ff9b::a4d:1".parse().map_err(|_| "ip")?));
            ip(&["addr", "del", "10.77.0.1/24", "dev", "lo"])?;
            wait_until(|| !nodes.contains(added), &nodes)
        })
        .join()
        .expect("thread");
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    /// Polls a condition the watcher thread makes true, for at most ten seconds.
    fn wait_until(cond: impl Fn() -> bool, nodes: &NodeAddresses) -> Result<(), String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cond() {
            if std::time::Instant::now() > deadline {
                return Err(format!("the change was not seen within 10 s: {nodes:?}"));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    #[test]
    fn malformed_netlink_data_yields_nothing_rather_than_panicking() {
        assert_eq!(messages(&[0xff; 7]).count(), 0);
        assert_eq!(
            messages(&[200, 0, 0, 0, 20, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]).count(),
            0
        );
        assert_eq!(address_of(&[2, 0, 0, 0, 0, 0, 0, 0, 9, 0, 2, 0]), None);
        assert_eq!(
            address_of(&[2, 0, 0, 0, 0, 0, 0, 0, 8, 0, 2, 0, 10, 1, 2, 3]),
            Some("10.1.2.3".parse().expect("ip"))
        );
    }
}
