//! A tiny authoritative DNS server (UDP, A and AAAA records) that stands in for a cluster's
//! DNS: pods on the test node resolve through it (the kubelet's `clusterDNS`), so a guest
//! reaches `api.internal.example.com` the way a workload would in a real cluster; `wa8s run`
//! resolves through it with a resolv.conf naming it. A name may hold several addresses of
//! both families (`[127.0.0.1, 10.0.0.2]`, `::ffff:127.0.0.1`, `64:ff9b::7f00:1`): the mixed
//! and mapped answers the network gate must see through.
//!
//! Guarantees: a held name gets all its IPv4 addresses for A and all its IPv6 addresses for
//! AAAA, in the order given; other types, and a family it has none of, are an empty NOERROR
//! answer; every other name is NXDOMAIN. Caveat: no TCP, no EDNS, one question per message,
//! which is all glibc's stub resolver sends; answers must fit 512 bytes (about 25 records).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

type Records = Arc<Mutex<HashMap<String, Vec<IpAddr>>>>;

/// A running server; stopped on drop.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    records: Records,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves on `addr` (port 53 for a resolv.conf nameserver; 0 for any free port). The
    /// address need not be assigned yet: a bridge's gateway address appears only with the
    /// first pod. Started on a thread inside a network namespace, it serves there.
    pub fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        socket.set_freebind_v4(true)?;
        socket.bind(&addr.into())?;
        let socket: UdpSocket = socket.into();
        // The port actually bound, when `addr` asked for any.
        let addr = socket.local_addr()?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let records = Records::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (records, stop) = (records.clone(), stop.clone());
            std::thread::spawn(move || serve(&socket, &records, &stop))
        };
        Ok(DnsServer {
            addr,
            records,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `name` (case-insensitive, without the trailing dot) with `ip` alone from now
    /// on.
    pub fn insert(&self, name: &str, ip: Ipv4Addr) {
        self.set(name, &[IpAddr::V4(ip)]);
    }

    /// Holds the mixed and IPv4-embedded answers of [`HostileNames`] under `zone`, for a
    /// guest whose node has address `node` and whose one allowed destination is `allowed`.
    pub fn hold_hostile(&self, zone: &str, node: Ipv4Addr, allowed: Ipv4Addr) -> HostileNames {
        let (loopback, node_v4) = (Ipv4Addr::LOCALHOST, node);
        let [mapped_loopback, nat64_loopback] = ipv4_embedded(loopback).map(IpAddr::V6);
        let [mapped_node, nat64_node] = ipv4_embedded(node_v4).map(IpAddr::V6);
        let (loopback, node, allowed) = (
            IpAddr::V4(loopback),
            IpAddr::V4(node_v4),
            IpAddr::V4(allowed),
        );
        let mixed = [
            ("mixed", vec![loopback, allowed]),
            (
                "mixed-mapped",
                vec![
                    mapped_loopback,
                    nat64_loopback,
                    mapped_node,
                    nat64_node,
                    loopback,
                    node,
                    allowed,
                ],
            ),
        ];
        let embedded_only = [
            ("mapped-loopback", vec![mapped_loopback]),
            ("nat64-loopback", vec![nat64_loopback]),
            ("mapped-node", vec![mapped_node]),
            ("nat64-node", vec![nat64_node]),
        ];
        let hold = |names: &[(&str, Vec<IpAddr>)]| -> Vec<String> {
            names
                .iter()
                .map(|(label, ips)| {
                    let name = format!("{label}.{zone}");
                    self.set(&name, ips);
                    name
                })
                .collect()
        };
        HostileNames {
            mixed: hold(&mixed),
            embedded_only: hold(&embedded_only),
        }
    }

    /// Answers `name` with `ips` from now on: its IPv4 ones for A, its IPv6 ones for AAAA.
    pub fn set(&self, name: &str, ips: &[IpAddr]) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                name.trim_end_matches('.').to_ascii_lowercase(),
                ips.to_vec(),
            );
    }
}

/// Names a network gate must see through, as [`DnsServer::hold_hostile`] holds them.
#[derive(Debug, Clone)]
pub struct HostileNames {
    /// `mixed.<zone>` (loopback, then the allowed address) and `mixed-mapped.<zone>` (the
    /// mapped and NAT64 forms of loopback and of the node, loopback, the node, then the
    /// allowed address): a guest must reach the allowed address and nothing else.
    pub mixed: Vec<String>,
    /// `{mapped,nat64}-{loopback,node}.<zone>`, each answering that one IPv6 form only: a
    /// guest must be refused.
    pub embedded_only: Vec<String>,
}

/// The IPv6 forms that embed `ip`: IPv4-mapped (`::ffff:a.b.c.d`) and NAT64's well-known
/// prefix (`64:ff9b::a.b.c.d`). A gate that checks only the IPv4 form lets these through.
pub fn ipv4_embedded(ip: Ipv4Addr) -> [Ipv6Addr; 2] {
    let [a, b, c, d] = ip.octets();
    [
        ip.to_ipv6_mapped(),
        Ipv6Addr::from([0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, a, b, c, d]),
    ]
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: &UdpSocket, records: &Records, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let table = records.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(reply) = answer(&buf[..n], &table) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const NXDOMAIN: u8 = 3;
const FORMERR: u8 = 1;

/// The reply to one query message, or `None` for something that is not a query.
pub fn answer(query: &[u8], records: &HashMap<String, Vec<IpAddr>>) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let questions = u16::from_be_bytes([query[4], query[5]]);
    let parsed = (questions == 1).then(|| question(&query[12..])).flatten();
    let mut reply = Vec::with_capacity(64);
    reply.extend_from_slice(&query[..2]);
    // QR, the query's opcode and RD; AA.
    reply.push(0x80 | (query[2] & 0x79) | 0x04);
    let Some((name, qtype, qclass, len)) = parsed else {
        reply.push(FORMERR);
        reply.extend_from_slice(&[0; 8]);
        return Some(reply);
    };
    let held = records.get(&name);
    let rcode = if held.is_some() { 0 } else { NXDOMAIN };
    let rdata: Vec<Vec<u8>> = held
        .into_iter()
        .flatten()
        .filter(|_| qclass == CLASS_IN)
        .filter_map(|ip| match (ip, qtype) {
            (IpAddr::V4(v4), TYPE_A) => Some(v4.octets().to_vec()),
            (IpAddr::V6(v6), TYPE_AAAA) => Some(v6.octets().to_vec()),
            _ => None,
        })
        .collect();
    let answers = u16::try_from(rdata.len()).unwrap_or(0);
    reply.push(rcode);
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&answers.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(&query[12..12 + len]);
    for data in rdata.iter().take(usize::from(answers)) {
        // The name by pointer to the question, the question's type, class IN, TTL 5 s.
        reply.extend_from_slice(&[0xc0, 12]);
        reply.extend_from_slice(&qtype.to_be_bytes());
        reply.extend_from_slice(&[0, 1, 0, 0, 0, 5]);
        reply.extend_from_slice(&u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
        reply.extend_from_slice(data);
    }
    Some(reply)
}

/// `(lowercase name, type, class, bytes taken)` of the question at the start of `msg`.
fn question(msg: &[u8]) -> Option<(String, u16, u16, usize)> {
    let mut labels = Vec::new();
    let mut i = 0;
    loop {
        let len = usize::from(*msg.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = msg.get(i..i + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        i += len;
    }
    let t = msg.get(i..i + 4)?;
    Some((
        labels.join("."),
        u16::from_be_bytes([t[0], t[1]]),
        u16::from_be_bytes([t[2], t[3]]),
        i + 4,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    fn records() -> HashMap<String, Vec<IpAddr>> {
        [
            (
                "api.internal.example.com".to_owned(),
                vec![IpAddr::V4(Ipv4Addr::new(10, 245, 0, 1))],
            ),
            (
                "mixed.example.com".to_owned(),
                [
                    "127.0.0.1",
                    "10.250.0.2",
                    "::ffff:127.0.0.1",
                    "64:ff9b::7f00:1",
                ]
                .map(|ip| ip.parse().expect("ip"))
                .to_vec(),
            ),
        ]
        .into()
    }

    /// The addresses in the answer section of `reply` (all records of `size` bytes each).
    fn addresses(reply: &[u8], query_len: usize, size: usize) -> Vec<IpAddr> {
        let count = usize::from(u16::from_be_bytes([reply[6], reply[7]]));
        let mut at = query_len;
        (0..count)
            .map(|_| {
                let rdlen = usize::from(u16::from_be_bytes([reply[at + 10], reply[at + 11]]));
                assert_eq!(rdlen, size);
                let data = &reply[at + 12..at + 12 + rdlen];
                at += 12 + rdlen;
                match size {
                    4 => IpAddr::from(<[u8; 4]>::try_from(data).expect("4 bytes")),
                    _ => IpAddr::from(<[u8; 16]>::try_from(data).expect("16 bytes")),
                }
            })
            .collect()
    }

    #[test]
    fn a_held_name_gets_its_address_whatever_its_case() {
        let reply =
            answer(&query("API.internal.example.com", TYPE_A), &records()).expect("a reply");
        assert_eq!(&reply[..2], &[0x12, 0x34], "same id");
        assert_eq!(reply[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 1, "one answer");
        assert_eq!(&reply[reply.len() - 4..], &[10, 245, 0, 1]);
    }

    #[test]
    fn other_names_are_nxdomain_and_other_types_get_no_answer() {
        let reply = answer(&query("other.example.org", TYPE_A), &records()).expect("a reply");
        assert_eq!(reply[3] & 0x0f, NXDOMAIN);
        let reply = answer(&query("api.internal.example.com", 28), &records()).expect("a reply");
        assert_eq!(reply[3] & 0x0f, 0);
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 0, "no AAAA");
    }

    #[test]
    fn a_name_with_several_addresses_answers_each_family_with_all_of_its_own_in_order() {
        let q = query("mixed.example.com", TYPE_A);
        let reply = answer(&q, &records()).expect("a reply");
        assert_eq!(reply[3] & 0x0f, 0);
        assert_eq!(
            addresses(&reply, q.len(), 4),
            ["127.0.0.1", "10.250.0.2"].map(|ip| ip.parse::<IpAddr>().expect("ip"))
        );
        let q = query("mixed.example.com", TYPE_AAAA);
        let reply = answer(&q, &records()).expect("a reply");
        assert_eq!(
            addresses(&reply, q.len(), 16),
            ["::ffff:127.0.0.1", "64:ff9b::7f00:1"].map(|ip| ip.parse::<IpAddr>().expect("ip"))
        );
        // Another type for a held name: NOERROR, nothing.
        let reply = answer(&query("mixed.example.com", 16), &records()).expect("a reply");
        assert_eq!(reply[3] & 0x0f, 0);
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 0);
    }

    #[test]
    fn ipv4_embedded_forms_are_the_mapped_and_nat64_addresses() {
        let forms = ipv4_embedded(Ipv4Addr::LOCALHOST);
        assert_eq!(
            forms,
            ["::ffff:127.0.0.1", "64:ff9b::7f00:1"].map(|ip| ip.parse::<Ipv6Addr>().expect("ip"))
        );
    }

    #[test]
    fn the_server_answers_over_udp_and_set_replaces_a_names_addresses() {
        let server = DnsServer::start("127.0.0.1:0".parse().expect("addr")).expect("start");
        let addr = server.addr();
        assert_ne!(addr.port(), 0, "the bound port is reported");
        server.insert("one.example.com", Ipv4Addr::new(10, 0, 0, 1));
        server.set(
            "one.example.com",
            &[
                "10.0.0.2".parse().expect("ip"),
                "10.0.0.3".parse().expect("ip"),
            ],
        );
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let q = query("one.example.com", TYPE_A);
        client.send_to(&q, addr).expect("send");
        let mut buf = [0u8; 512];
        let n = client.recv(&mut buf).expect("a reply within 5s");
        assert_eq!(
            addresses(&buf[..n], q.len(), 4),
            ["10.0.0.2", "10.0.0.3"].map(|ip| ip.parse::<IpAddr>().expect("ip"))
        );
    }

    #[test]
    fn a_truncated_question_is_a_format_error_and_a_reply_is_ignored() {
        let mut q = query("api.internal.example.com", TYPE_A);
        q.truncate(20);
        assert_eq!(answer(&q, &records()).expect("a reply")[3] & 0x0f, FORMERR);
        let mut r = query("x", TYPE_A);
        r[2] |= 0x80;
        assert!(answer(&r, &records()).is_none());
    }
}
