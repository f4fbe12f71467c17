//! What an address *is*, whatever way it is written: IPv6 has several forms that carry an
//! IPv4 address (mapped, compatible, translated, NAT64, 6to4, Teredo), and a kernel or a
//! translator on the path may deliver a packet sent to one of them to that IPv4 address. Every
//! check compares these forms, never the text or the bare value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IPv4 address an IPv6 address carries, if it is one of the forms that can reach it:
/// `::ffff:a.b.c.d` (mapped), `::a.b.c.d` (compatible, deprecated but still routed by some
/// stacks), `::ffff:0:a.b.c.d` (SIIT translated), `64:ff9b::/96` (NAT64 well-known prefix),
/// `64:ff9b:1::/48` (RFC 8215 local-use NAT64, RFC 6052's /48 layout), `2002::/16` (6to4) and
/// `2001::/32` (Teredo: the client's address, inverted, in the last 32 bits).
pub(crate) fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
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
pub(crate) fn forms(ip: IpAddr) -> impl Iterator<Item = IpAddr> {
    let embedded = match ip {
        IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    std::iter::once(ip).chain(embedded)
}

/// Whether two addresses reach the same host: equal, or one carries the other.
pub(crate) fn same_host(a: IpAddr, b: IpAddr) -> bool {
    forms(a).any(|x| forms(b).any(|y| x == y))
}

/// Addresses no pattern reaches unless it names the address literally, in any of its forms:
/// loopback, link-local (169.254.0.0/16 holds cloud metadata services), unspecified and
/// `0.0.0.0/8` (Linux delivers it locally), broadcast, and multicast.
pub(crate) fn is_restricted(ip: IpAddr) -> bool {
    forms(ip).any(|ip| match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.octets()[0] == 0
                || v4.is_broadcast()
                || v4.is_multicast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    })
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
}
