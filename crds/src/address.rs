//! What an address *is*, whatever way it is written: IPv6 has several forms that carry an
//! IPv4 address (mapped, compatible, translated, NAT64, 6to4, Teredo), and a kernel or a
//! translator on the path may deliver a packet sent to one of them to that IPv4 address. Every
//! check compares these forms, never the text or the bare value.
//!
//! Both network gates use it: the guest's outbound policy (in the Wasm host) and the registry
//! address policy (in the OCI layer), so "restricted" means one thing everywhere.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The IPv4 address an IPv6 address carries, if it is one of the forms that can reach it:
/// `::ffff:a.b.c.d` (mapped), `::a.b.c.d` (compatible, deprecated but still routed by some
/// stacks), `::ffff:0:a.b.c.d` (SIIT translated), `64:ff9b::/96` (NAT64 well-known prefix),
/// `64:ff9b:1::/48` (RFC 8215 local-use NAT64, RFC 6052's /48 layout), `2002::/16` (6to4) and
/// `2001::/32` (Teredo: the client's address, inverted, in the last 32 bits).
pub fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    let last32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    match s {
        // Compatible; `::` and `::1` are IPv6's own unspecified and loopback.
        [0, 0, 0, 0, 0, 0, _, _] if u128::from(v6) > 1 => Some(last32),
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(last32),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(last32),
        [0x64, 0xff9b, 1, ..] => Some(Ipv4Addr::new(o[6], o[7], o[9], o[10])),
        [0x2002, ..] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        [0x2001, 0, ..] => Some(Ipv4Addr::from(!u32::from(last32))),
        _ => None,
    }
}

/// The address itself, then the IPv4 address it carries (if any).
pub fn forms(ip: IpAddr) -> impl Iterator<Item = IpAddr> {
    let embedded = match ip {
        IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    std::iter::once(ip).chain(embedded)
}

/// Whether two addresses reach the same host: equal, or one carries the other.
pub fn same_host(a: IpAddr, b: IpAddr) -> bool {
    forms(a).any(|x| forms(b).any(|y| x == y))
}

/// Addresses no pattern reaches unless it names the address literally, in any of its forms:
/// loopback, link-local (169.254.0.0/16 holds cloud metadata services), unspecified and
/// `0.0.0.0/8` (Linux delivers it locally), broadcast, and multicast.
pub fn is_restricted(ip: IpAddr) -> bool {
    restriction(ip).is_some()
}

/// Which restricted range `ip` falls in (in any of its forms), named for error messages.
pub fn restriction(ip: IpAddr) -> Option<&'static str> {
    forms(ip).find_map(|ip| match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("loopback"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some("unspecified"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("broadcast"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("multicast"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("loopback"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("unspecified"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("multicast"),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Some("link-local"),
        _ => None,
    })
}

/// A network in CIDR notation (`10.96.0.0/12`, `fd00::/8`); a bare address is its own /32 or
/// /128. Membership is tested in every form of the address, as the restricted ranges are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    base: IpAddr,
    prefix: u8,
}

/// Why a network could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a network: {reason} (expected CIDR notation such as 10.96.0.0/12)")]
pub struct NetworkError {
    input: String,
    reason: &'static str,
}

impl Network {
    /// Whether `ip`, or the IPv4 address it carries, is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        forms(ip).any(|ip| match (self.base, ip) {
            (IpAddr::V4(b), IpAddr::V4(a)) => {
                prefix_eq(u32::from(b).into(), u32::from(a).into(), 32, self.prefix)
            }
            (IpAddr::V6(b), IpAddr::V6(a)) => prefix_eq(b.into(), a.into(), 128, self.prefix),
            _ => false,
        })
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    let host = u32::from(bits - prefix);
    a.checked_shr(host).unwrap_or(0) == b.checked_shr(host).unwrap_or(0)
}

impl FromStr for Network {
    type Err = NetworkError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| NetworkError {
            input: input.to_owned(),
            reason,
        };
        let (addr, prefix) = match input.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (input, None),
        };
        let base: IpAddr = addr.parse().map_err(|_| fail("not an IP address"))?;
        let bits = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse()
                .map_err(|_| fail("the prefix length is not a number"))?,
            Some(_) => return Err(fail("the prefix length is not a number")),
        };
        if prefix > bits {
            return Err(fail("the prefix length is longer than the address"));
        }
        let network = Network { base, prefix };
        let host_bits_clear = match base {
            IpAddr::V4(b) => u32::from(b).checked_shl(u32::from(prefix)).unwrap_or(0) == 0,
            IpAddr::V6(b) => u128::from(b).checked_shl(u32::from(prefix)).unwrap_or(0) == 0,
        };
        if !host_bits_clear {
            return Err(fail("bits are set past the prefix length"));
        }
        Ok(network)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn every_ipv4_embedding_names_the_ipv4_address_it_carries() {
        for (v6, v4) in [
            ("::ffff:10.1.2.3", "10.1.2.3"),
            ("::10.1.2.3", "10.1.2.3"),
            ("::ffff:0:10.1.2.3", "10.1.2.3"),
            ("64:ff9b::10.1.2.3", "10.1.2.3"),
            ("64:ff9b:1:a01:2:300::", "10.1.2.3"),
            ("2002:a01:203::1", "10.1.2.3"),
            // Teredo: server 65.54.227.120, client 10.1.2.3 inverted.
            ("2001:0:4136:e378:8000:63bf:f5fe:fdfc", "10.1.2.3"),
        ] {
            let IpAddr::V6(v6addr) = ip(v6) else {
                panic!("{v6}")
            };
            assert_eq!(embedded_ipv4(v6addr).map(IpAddr::V4), Some(ip(v4)), "{v6}");
            assert!(same_host(ip(v6), ip(v4)), "{v6} ~ {v4}");
        }
        for plain in ["::", "::1", "2001:db8::1", "fd00::7", "2606:4700::1111"] {
            let IpAddr::V6(v6) = ip(plain) else {
                panic!("{plain}")
            };
            assert_eq!(embedded_ipv4(v6), None, "{plain}");
        }
    }

    #[test]
    fn restricted_ranges_are_restricted_in_every_form() {
        for r in [
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "::ffff:0:127.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1:7f00:0:100::",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
        ] {
            assert!(is_restricted(ip(r)), "{r}");
        }
        for open in [
            "10.0.0.7",
            "93.184.216.34",
            "fd00::7",
            "2001:db8::1",
            "64:ff9b::5db8:d822",
        ] {
            assert!(!is_restricted(ip(open)), "{open}");
        }
    }

    #[test]
    fn a_network_holds_its_addresses_in_every_form_and_nothing_else() {
        let net: Network = "10.96.0.0/12".parse().expect("valid");
        for inside in [
            "10.96.0.1",
            "10.111.255.255",
            "::ffff:10.96.0.10",
            "64:ff9b::a60:1",
        ] {
            assert!(net.contains(ip(inside)), "{inside}");
        }
        for outside in ["10.112.0.0", "10.95.255.255", "192.168.0.1", "fd00::1"] {
            assert!(!net.contains(ip(outside)), "{outside}");
        }
        let v6: Network = "fd00::/8".parse().expect("valid");
        assert!(v6.contains(ip("fd12:3456::1")));
        assert!(!v6.contains(ip("fe80::1")));
        let all: Network = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains(ip("203.0.113.9")));
        let one: Network = "192.0.2.7".parse().expect("valid");
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
    }

    #[test]
    fn a_network_that_is_not_cidr_is_refused_with_the_reason() {
        for (bad, reason) in [
            ("10.96.0.0/33", "longer than the address"),
            ("10.96.0.1/12", "past the prefix length"),
            ("10.96.0.0/", "not a number"),
            ("10.96.0.0/+1", "not a number"),
            ("ten/8", "not an IP address"),
            ("fd00::/129", "longer than the address"),
        ] {
            let e = bad.parse::<Network>().expect_err("refused").to_string();
            assert!(e.contains(reason) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn a_restriction_is_named() {
        assert_eq!(restriction(ip("::ffff:127.0.0.1")), Some("loopback"));
        assert_eq!(restriction(ip("169.254.169.254")), Some("link-local"));
        assert_eq!(restriction(ip("10.0.0.1")), None);
    }
}
