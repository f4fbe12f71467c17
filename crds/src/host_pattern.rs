//! Outbound host patterns (`spec.wasi.network[].allowedHosts`), parsed and matched.
//!
//! Grammar (the CRD's CEL rules accept exactly the same, proven over
//! [`crate::grammar_examples`] against a real API server): `[scheme://]host[:port]` where
//! `scheme` is `http`, `https`, `tcp`, `udp` or `*` (lowercase); `host` is `*`, `*.suffix`, a
//! DNS name (labels of 1-63 letters, digits and inner `-`, at most 253 characters), an IPv4
//! literal or a bracketed IPv6 literal (no zone, not IPv4-mapped); `port` is 1-65535 (digits,
//! no leading zero) or `*`. A missing scheme or port means any. `*.example.com` matches
//! `a.example.com` and `a.b.example.com`, not `example.com`. Names compare case-insensitively.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{pattern:?} is not a host pattern: {reason} (expected host, *.suffix, * or an IP, with optional :port and scheme://)"
)]
pub struct PatternError {
    /// The text given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A parsed allowedHosts entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    scheme: Option<String>,
    host: HostMatch,
    port: Option<u16>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    /// Lowercase suffix including the leading dot, e.g. ".internal.example.com".
    Suffix(String),
    /// Lowercase DNS name.
    Name(String),
    Ip(IpAddr),
}

impl FromStr for HostRule {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, PatternError> {
        let err = |reason| PatternError {
            pattern: text.to_owned(),
            reason,
        };
        let (scheme, rest) = match text.split_once("://") {
            Some((s, rest)) => {
                if !matches!(s, "http" | "https" | "tcp" | "udp" | "*") {
                    return Err(err("the scheme must be http, https, tcp, udp or *"));
                }
                ((s != "*").then(|| s.to_owned()), rest)
            }
            None => (None, text),
        };
        let (host, port) = split_port(rest).ok_or_else(|| err("malformed host or port"))?;
        let port =
            match port {
                None | Some("*") => None,
                Some(p) => Some(parse_port(p).ok_or_else(|| {
                    err("the port must be 1-65535 (digits, no leading zero) or *")
                })?),
            };
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let v6: Ipv6Addr = v6.parse().map_err(|_| err("malformed IPv6 address"))?;
            // The API server's CEL ip() refuses the mapped form; write the IPv4 address.
            if v6.to_ipv4_mapped().is_some() {
                return Err(err("an IPv4-mapped IPv6 address: write the IPv4 address"));
            }
            HostMatch::Ip(IpAddr::V6(v6))
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            HostMatch::Ip(ip)
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !is_dns_name(suffix) {
                return Err(err("malformed name after *."));
            }
            HostMatch::Suffix(format!(".{}", suffix.to_ascii_lowercase()))
        } else if is_dns_name(host) {
            HostMatch::Name(host.to_ascii_lowercase())
        } else {
            return Err(err("malformed host name"));
        };
        Ok(HostRule {
            scheme,
            host,
            port,
            text: text.to_owned(),
        })
    }
}

fn split_port(s: &str) -> Option<(&str, Option<&str>)> {
    if s.starts_with('[') {
        let end = s.find(']')?;
        let (host, rest) = s.split_at(end + 1);
        return match rest {
            "" => Some((host, None)),
            r => Some((host, Some(r.strip_prefix(':')?))),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

/// Digits only and no leading zero, as the CRD's CEL rule has it (`u16`'s own parser would
/// also take `+80` and `0080`).
fn parse_port(p: &str) -> Option<u16> {
    if p.starts_with('0') || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok().filter(|p| *p != 0)
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl HostRule {
    /// Whether a connection for `scheme` (`http`, `https`, `tcp`, `udp`) to `host:port` is
    /// allowed by name. `host` may be a name or an IP literal (IPv6 without brackets).
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        if self
            .scheme
            .as_deref()
            .is_some_and(|s| !s.eq_ignore_ascii_case(scheme))
        {
            return false;
        }
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        self.matches_host(host)
    }

    /// Whether the pattern's host part matches `host` (a name, a bracketed or bare IP), with
    /// any scheme and port. Name lookups are gated with this: a guest may resolve exactly
    /// the names some rule could let it reach. A trailing root dot is ignored.
    pub fn matches_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.strip_suffix('.').unwrap_or(host);
        if !host.is_ascii() {
            return false;
        }
        match &self.host {
            HostMatch::Any => true,
            HostMatch::Ip(ip) => host.parse::<IpAddr>().is_ok_and(|h| h == *ip),
            HostMatch::Name(name) => host.eq_ignore_ascii_case(name),
            // Compared as bytes: a guest's host may hold multi-byte characters, and slicing
            // a str inside one panics.
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }

    /// The IP address when the pattern names one literally: the only way to reach loopback,
    /// link-local or the node's own addresses.
    pub fn literal_ip(&self) -> Option<IpAddr> {
        match self.host {
            HostMatch::Ip(ip) => Some(ip),
            _ => None,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> HostRule {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn wildcard_suffix_matches_subdomains_but_not_the_apex() {
        let r = rule("*.internal.example.com");
        assert!(r.allows("https", "api.internal.example.com", 443));
        assert!(r.allows("tcp", "a.b.INTERNAL.example.com", 5432));
        assert!(!r.allows("https", "internal.example.com", 443));
        assert!(!r.allows("https", "evilinternal.example.com", 443));
        assert!(!r.allows("https", "internal.example.com.evil.org", 443));
    }

    #[test]
    fn scheme_and_port_narrow_a_pattern() {
        let r = rule("https://api.example.com:8443");
        assert!(r.allows("https", "api.example.com", 8443));
        assert!(!r.allows("http", "api.example.com", 8443));
        assert!(!r.allows("https", "api.example.com", 443));
        let any_port = rule("api.example.com:*");
        assert!(any_port.allows("tcp", "api.example.com", 1));
    }

    #[test]
    fn ip_literals_match_only_themselves_and_are_reported_as_literal() {
        let r = rule("127.0.0.1:8080");
        assert!(r.allows("http", "127.0.0.1", 8080));
        assert!(!r.allows("http", "localhost", 8080));
        assert_eq!(r.literal_ip(), Some("127.0.0.1".parse().expect("ip")));
        let v6 = rule("[fd00::7]:80");
        assert!(v6.allows("http", "[fd00::7]", 80));
        assert!(v6.allows("tcp", "fd00::7", 80));
    }

    #[test]
    fn malformed_patterns_are_refused_with_the_reason() {
        for (bad, why) in [
            ("exa mple.com", "malformed host name"),
            ("api.*.example.com", "malformed host name"),
            ("ftp://example.com", "scheme"),
            ("example.com:0", "port"),
            ("example.com:99999", "port"),
            ("*.", "after *."),
            ("", "malformed host name"),
        ] {
            let err = bad.parse::<HostRule>().expect_err(bad);
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_host_with_multibyte_characters_is_compared_not_sliced() {
        let r = rule("*.example.com");
        // The suffix would start inside the two-byte 'é' (byte 1 of 13).
        assert!(!r.allows("https", "\u{e9}abcdefghijk", 443));
        assert!(!r.allows("https", "\u{1F600}\u{1F600}\u{1F600}\u{1F600}x", 443));
        // Names on the wire are ASCII (IDNA's punycode): anything else matches nothing.
        assert!(!r.allows("https", "\u{e9}t\u{e9}.example.com", 443));
        assert!(!rule("*").matches_host("\u{e9}t\u{e9}.example.com"));
        assert!(r.allows("https", "xn--t-9ia.example.com", 443));
    }
}
