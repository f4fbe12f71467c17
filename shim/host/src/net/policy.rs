//! `allowedHosts` as a policy: which names and addresses a guest may reach, by which
//! protocol and port. Names are matched by the CRD's grammar ([`HostRule`]); addresses are
//! compared in every form they can be written in ([`super::address`]).

use std::net::IpAddr;
use std::sync::Arc;

use wa8s_api::host_pattern::HostRule;

use super::NodeAddresses;
use crate::Error;
use wa8s_api::address::is_restricted;

/// Outbound network grants: which hosts, and which addresses stay blocked.
#[derive(Debug, Clone, Default)]
pub struct NetworkPolicy {
    rules: Arc<[HostRule]>,
    /// The node's own addresses: blocked like loopback unless listed literally.
    node: NodeAddresses,
}

impl NetworkPolicy {
    /// Parses allowedHosts patterns (the CRD's syntax). Empty denies all outbound traffic.
    pub fn new<S: AsRef<str>>(patterns: &[S], node: NodeAddresses) -> Result<Self, Error> {
        let rules = patterns
            .iter()
            .map(|p| {
                p.as_ref().parse::<HostRule>().map_err(|e| Error::Grant {
                    what: "allowed host".into(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(NetworkPolicy { rules, node })
    }

    /// Whether any outbound traffic is granted.
    pub fn is_open(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The rule allowing `scheme://host:port` by name, if any.
    pub fn rule_for(&self, scheme: &str, host: &str, port: u16) -> Option<&HostRule> {
        self.rules.iter().find(|r| r.allows(scheme, host, port))
    }

    /// Whether `ip` may be connected to after `rule` matched the name it came from.
    /// Restricted and node addresses, in any form, need the rule to name that very address
    /// (or its IPv4-mapped form); so a name cannot be pointed (by DNS) at them.
    pub fn address_allowed(&self, rule: &HostRule, ip: IpAddr) -> bool {
        if rule
            .literal_ip()
            .is_some_and(|l| l == ip || l == ip.to_canonical())
        {
            return true;
        }
        !(is_restricted(ip) || self.node.contains(ip))
    }

    /// Whether the guest may resolve `name`: some rule matches it, whatever its port and
    /// scheme.
    pub fn may_resolve(&self, name: &str) -> bool {
        self.rules.iter().any(|r| r.matches_host(name))
    }

    /// Whether a socket for `proto` may reach `ip:port` because the granted `name` resolved
    /// to `ip`.
    pub fn name_allowed(&self, proto: &str, name: &str, port: u16, ip: IpAddr) -> bool {
        self.rules
            .iter()
            .any(|r| r.allows(proto, name, port) && self.address_allowed(r, ip))
    }

    /// Whether a raw socket connection (`tcp`/`udp`) to `ip:port` is allowed. Sockets see
    /// only addresses, so only IP-literal rules and `*` can match them.
    pub fn socket_allowed(&self, proto: &str, ip: IpAddr, port: u16) -> bool {
        self.rules
            .iter()
            .any(|r| r.allows(proto, &ip.to_string(), port) && self.address_allowed(r, ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn raw_sockets_reach_only_literal_or_wildcard_public_addresses() {
        let p = NetworkPolicy::new(
            &["10.0.0.7:5432", "tcp://*:443", "db.internal.example.com"],
            NodeAddresses::fixed(vec![ip("10.1.1.1")]),
        )
        .expect("patterns");
        assert!(p.socket_allowed("tcp", ip("10.0.0.7"), 5432));
        assert!(!p.socket_allowed("tcp", ip("10.0.0.7"), 5433));
        assert!(p.socket_allowed("tcp", ip("93.184.216.34"), 443));
        assert!(!p.socket_allowed("udp", ip("93.184.216.34"), 443));
        // Restricted and node addresses stay blocked even under a wildcard.
        assert!(!p.socket_allowed("tcp", ip("127.0.0.1"), 443));
        assert!(!p.socket_allowed("tcp", ip("169.254.169.254"), 443));
        assert!(!p.socket_allowed("tcp", ip("10.1.1.1"), 443));
        // A name pattern cannot match a bare address.
        assert!(!p.socket_allowed("tcp", ip("10.0.0.8"), 5432));
    }

    #[test]
    fn node_addresses_are_blocked_in_every_ipv6_form_that_carries_them() {
        let node = NodeAddresses::fixed(vec![ip("10.1.1.1"), ip("fd00::1")]);
        let p = NetworkPolicy::new(&["*"], node).expect("patterns");
        let any = "*".parse::<HostRule>().expect("rule");
        for form in [
            "10.1.1.1",
            "::ffff:10.1.1.1",
            "::10.1.1.1",
            "::ffff:0:10.1.1.1",
            "64:ff9b::10.1.1.1",
            "64:ff9b:1:a01:1:100::",
            "2002:a01:101::",
            "fd00::1",
        ] {
            assert!(
                !p.address_allowed(&any, ip(form)),
                "{form} reached the node"
            );
            assert!(!p.socket_allowed("tcp", ip(form), 443), "{form}");
        }
        assert!(p.address_allowed(&any, ip("10.1.1.2")));
        assert!(p.address_allowed(&any, ip("64:ff9b::10.1.1.2")));
    }

    #[test]
    fn a_literal_rule_opens_its_address_and_its_mapped_form_only() {
        let p = NetworkPolicy::new(&["127.0.0.1:8080"], NodeAddresses::default()).expect("ok");
        let rule = p.rule_for("http", "127.0.0.1", 8080).expect("rule").clone();
        assert!(p.address_allowed(&rule, ip("127.0.0.1")));
        assert!(p.address_allowed(&rule, ip("::ffff:127.0.0.1")));
        assert!(!p.address_allowed(&rule, ip("127.0.0.2")));
        assert!(!p.address_allowed(&rule, ip("::1")));
    }

    #[test]
    fn no_patterns_means_no_network() {
        let p = NetworkPolicy::new::<&str>(&[], NodeAddresses::default()).expect("empty");
        assert!(!p.is_open());
        assert!(!p.socket_allowed("tcp", ip("93.184.216.34"), 80));
    }

    #[test]
    fn a_malformed_pattern_is_a_grant_error() {
        let err =
            NetworkPolicy::new(&["exa mple.com"], NodeAddresses::default()).expect_err("refused");
        assert!(err.to_string().contains("is not a host pattern"), "{err}");
    }
}
