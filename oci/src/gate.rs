//! Which addresses registry requests may reach.
//!
//! A `WebAssembly` object's registry is user-controlled, and a registry chooses where its
//! redirects, token realms and foreign layer URLs point. Without a gate the operator (and the
//! shim's fallback pull) would send requests wherever they pointed: loopback, the cloud's
//! metadata service, the cluster's own services. With [`AddressPolicy::Gated`]:
//!
//! - names are resolved here and only allowed addresses are handed to the HTTP client, which
//!   connects to exactly those (no second lookup);
//! - hosts written as addresses (the registry itself, a redirect, a realm) are checked before
//!   any request;
//! - registries the deployer listed ([`AddressPolicy::Gated::private_registries`], and every
//!   configured mirror) are exempt: they are the deployer's own choice, not an object's.
//!
//! "Restricted" is [`wa8s_api::address::restriction`], the same ranges the guest's outbound
//! gate uses, in every IPv4-embedded IPv6 form, plus the deployer's denied networks.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use oci_client::client::UrlGate;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use wa8s_api::address::{Network, restriction};

/// Which addresses registry requests may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AddressPolicy {
    /// Any address: the CLI, where the person typing the reference is the one at risk.
    #[default]
    Open,
    /// No loopback, link-local, unspecified, broadcast or multicast address, and none in
    /// `denied_networks`, except for the listed registries.
    Gated {
        /// `host[:port]` of registries reachable at any address (a registry inside the
        /// cluster, a local registry); configured mirrors are added to these.
        private_registries: Vec<String>,
        /// The cluster's own ranges (pod and service networks, the nodes' subnet).
        denied_networks: Vec<Network>,
    },
}

/// A request the policy refused, with why; reaches users as [`crate::Error::Refused`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refusal(pub(crate) String);

/// The policy as it applies to one registry's client.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    denied_networks: Arc<[Network]>,
}

impl AddressPolicy {
    /// The gate for `registry` (`host[:port]`), or `None` when the policy leaves it open.
    pub(crate) fn gate_for<'a>(
        &self,
        registry: &str,
        mirrors: impl IntoIterator<Item = &'a String>,
    ) -> Option<Gate> {
        match self {
            AddressPolicy::Open => None,
            AddressPolicy::Gated {
                private_registries,
                denied_networks,
            } => {
                let listed = |r: &String| r.eq_ignore_ascii_case(registry);
                let exempt =
                    private_registries.iter().any(listed) || mirrors.into_iter().any(listed);
                (!exempt).then(|| Gate {
                    denied_networks: denied_networks.as_slice().into(),
                })
            }
        }
    }
}

impl Gate {
    /// Why `ip` may not be reached, if it may not.
    fn refuses(&self, ip: IpAddr) -> Option<String> {
        if let Some(kind) = restriction(ip) {
            return Some(format!("{ip} is a {kind} address"));
        }
        self.denied_networks
            .iter()
            .find(|n| n.contains(ip))
            .map(|n| format!("{ip} is in the denied network {n}"))
    }

    /// Checks a host as written in a reference or URL: an address is checked now, a name
    /// when it is resolved.
    pub(crate) fn check_host(&self, host: &str) -> Result<(), Refusal> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => match self.refuses(ip) {
                Some(why) => Err(Refusal(why)),
                None => Ok(()),
            },
            Err(_) => Ok(()),
        }
    }

    /// The gate oci-client asks about URLs the registry chose.
    pub(crate) fn url_gate(&self) -> UrlGate {
        let gate = self.clone();
        Arc::new(move |url: &reqwest::Url| match url.host_str() {
            Some(host) => gate.check_host(host).map_err(|r| r.0),
            None => Err("the URL has no host".to_owned()),
        })
    }

    /// The resolver that hands the HTTP client only addresses this gate allows.
    pub(crate) fn resolver(&self) -> Arc<dyn Resolve> {
        Arc::new(GatedResolver(self.clone()))
    }

    /// The addresses of `name` this gate allows; an error naming every refused one when none
    /// is left.
    fn filter(&self, name: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refusal> {
        let mut refused = Vec::new();
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| match self.refuses(a.ip()) {
                Some(why) => {
                    refused.push(why);
                    false
                }
                None => true,
            })
            .collect();
        if allowed.is_empty() && !refused.is_empty() {
            return Err(Refusal(format!(
                "{name} resolves only to refused addresses ({})",
                refused.join("; ")
            )));
        }
        Ok(allowed)
    }
}

struct GatedResolver(Gate);

impl Resolve for GatedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let gate = self.0.clone();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            // getaddrinfo blocks; the port is replaced by the URL's.
            let lookup = name.clone();
            let addrs = tokio::task::spawn_blocking(move || {
                (lookup.as_str(), 0).to_socket_addrs().map(Vec::from_iter)
            })
            .await
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)??;
            let allowed = gate.filter(&name, addrs)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The refusal somewhere in `e`'s chain (from the resolver, the redirect policy or
/// oci-client's URL gate), if that is why it failed.
pub(crate) fn refusal(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<Refusal>() {
            return Some(r.0.clone());
        }
        if let Some(oci_client::errors::OciDistributionError::UrlRefused(r)) = e.downcast_ref() {
            return Some(r.clone());
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gated(private: &[&str], denied: &[&str]) -> AddressPolicy {
        AddressPolicy::Gated {
            private_registries: private.iter().map(|s| s.to_string()).collect(),
            denied_networks: denied.iter().map(|d| d.parse().expect("valid")).collect(),
        }
    }

    fn sock(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().expect("valid"), 443)
    }

    #[test]
    fn an_open_policy_and_a_listed_registry_or_mirror_have_no_gate() {
        let none: [&String; 0] = [];
        assert!(
            AddressPolicy::Open
                .gate_for("127.0.0.1:5000", none)
                .is_none()
        );
        let policy = gated(&["registry.local:5000"], &[]);
        assert!(policy.gate_for("Registry.Local:5000", none).is_none());
        let mirror = "127.0.0.1:5001".to_owned();
        assert!(policy.gate_for("127.0.0.1:5001", [&mirror]).is_none());
        assert!(policy.gate_for("ghcr.io", [&mirror]).is_some());
    }

    #[test]
    fn literal_hosts_in_restricted_or_denied_ranges_are_refused_in_every_form() {
        let gate = gated(&[], &["10.96.0.0/12"])
            .gate_for("x", [])
            .expect("valid");
        for (host, why) in [
            ("127.0.0.1", "loopback"),
            ("[::1]", "loopback"),
            ("[::ffff:127.0.0.1]", "loopback"),
            ("[64:ff9b::a9fe:a9fe]", "link-local"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("10.96.0.1", "denied network 10.96.0.0/12"),
            ("[::ffff:10.96.0.1]", "denied network 10.96.0.0/12"),
        ] {
            let e = gate.check_host(host).expect_err("refused");
            assert!(e.0.contains(why), "{host}: {e}");
        }
        for open in ["ghcr.io", "10.89.0.4", "[2001:db8::1]", "93.184.216.34"] {
            assert_eq!(gate.check_host(open), Ok(()), "{open}");
        }
    }

    #[test]
    fn a_name_keeps_only_its_allowed_addresses_and_fails_when_none_is_left() {
        let gate = gated(&[], &[]).gate_for("x", []).expect("valid");
        let kept = gate
            .filter(
                "mixed.example",
                vec![
                    sock("127.0.0.1"),
                    sock("93.184.216.34"),
                    sock("::ffff:127.0.0.1"),
                ],
            )
            .expect("valid");
        assert_eq!(kept, vec![sock("93.184.216.34")]);
        let e = gate
            .filter(
                "inside.example",
                vec![sock("127.0.0.1"), sock("169.254.169.254")],
            )
            .expect_err("refused");
        assert!(
            e.0.contains("inside.example")
                && e.0.contains("127.0.0.1 is a loopback")
                && e.0.contains("169.254.169.254 is a link-local"),
            "{e}"
        );
    }

    #[test]
    fn the_url_gate_checks_the_host_a_registry_chose() {
        let gate = gated(&[], &[]).gate_for("x", []).expect("valid").url_gate();
        let url = |s: &str| reqwest::Url::parse(s).expect("valid");
        assert!(gate(&url("http://127.0.0.1:8080/secret")).is_err());
        assert!(gate(&url("http://[::ffff:7f00:1]/")).is_err());
        assert!(gate(&url("https://auth.example/token")).is_ok());
    }
}
