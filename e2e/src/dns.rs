//! A tiny authoritative DNS server (UDP, A records only) that stands in for a cluster's DNS:
//! pods on the test node resolve through it (the kubelet's `clusterDNS`), so a guest reaches
//! `api.internal.example.com` the way a workload would in a real cluster.
//!
//! Guarantees: names it holds get their A record; every other name is NXDOMAIN, AAAA and
//! other types for a held name are an empty NOERROR answer. Caveat: no TCP, no EDNS, one
//! question per message, which is all glibc's stub resolver sends.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

type Records = Arc<Mutex<HashMap<String, Ipv4Addr>>>;

/// A running server; stopped on drop.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    records: Records,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves on `addr` (port 53 for a resolv.conf nameserver). The address need not be
    /// assigned yet: a bridge's gateway address appears only with the first pod.
    pub fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        socket.set_freebind_v4(true)?;
        socket.bind(&addr.into())?;
        let socket: UdpSocket = socket.into();
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

    /// Answers `name` (case-insensitive, without the trailing dot) with `ip` from now on.
    pub fn insert(&self, name: &str, ip: Ipv4Addr) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.trim_end_matches('.').to_ascii_lowercase(), ip);
    }
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
const CLASS_IN: u16 = 1;
const NXDOMAIN: u8 = 3;
const FORMERR: u8 = 1;

/// The reply to one query message, or `None` for something that is not a query.
pub fn answer(query: &[u8], records: &HashMap<String, Ipv4Addr>) -> Option<Vec<u8>> {
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
    let ip = records.get(&name).copied();
    let rcode = if ip.is_some() { 0 } else { NXDOMAIN };
    let answers = u16::from(ip.is_some() && qtype == TYPE_A && qclass == CLASS_IN);
    reply.push(rcode);
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&answers.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(&query[12..12 + len]);
    if let (1, Some(ip)) = (answers, ip) {
        // The name by pointer to the question, type A, class IN, TTL 5 s, 4 bytes.
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
        reply.extend_from_slice(&ip.octets());
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

    fn records() -> HashMap<String, Ipv4Addr> {
        [(
            "api.internal.example.com".to_owned(),
            Ipv4Addr::new(10, 245, 0, 1),
        )]
        .into()
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
    fn a_truncated_question_is_a_format_error_and_a_reply_is_ignored() {
        let mut q = query("api.internal.example.com", TYPE_A);
        q.truncate(20);
        assert_eq!(answer(&q, &records()).expect("a reply")[3] & 0x0f, FORMERR);
        let mut r = query("x", TYPE_A);
        r[2] |= 0x80;
        assert!(answer(&r, &records()).is_none());
    }
}
