//! How a deployment reaches registries: one description, built by the CLI from its flags, by
//! the operator from its flags (the chart's values) and by the shim from the node's
//! `shim.json`, with the same parsing and the same checks in all three.

use std::collections::BTreeMap;
use std::path::Path;

use crate::Error;
use crate::gate::AddressPolicy;
use crate::registry::DEFAULT_MAX_COMPONENT_BYTES;

/// How to reach registries; everything but whose credentials are presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) spoken to over plain HTTP. Loopback registries are too,
    /// unless they have a CA below.
    pub insecure: Vec<String>,
    /// `registry → PEM bundle`: the registry is spoken to over TLS (even on loopback) and
    /// these CAs are trusted for it, in addition to the system's roots.
    pub ca_certificates: BTreeMap<String, Vec<u8>>,
    /// `registry → mirror` (`ghcr.io → 127.0.0.1:5000`): every pull and resolve of the
    /// registry goes to the mirror, same repository and tag. Pushes are not redirected.
    pub mirrors: BTreeMap<String, String>,
    /// Which addresses requests may reach (see [`AddressPolicy`]).
    pub addresses: AddressPolicy,
    /// Largest component accepted (declared sizes are checked before downloading).
    pub max_component_bytes: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: Vec::new(),
            ca_certificates: BTreeMap::new(),
            mirrors: BTreeMap::new(),
            addresses: AddressPolicy::Open,
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
        }
    }
}

fn config_error(setting: &str, value: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        setting: format!("{setting} {value:?}"),
        reason: reason.into(),
    }
}

/// `LEFT=RIGHT` with both sides non-empty.
fn pair<'a>(setting: &str, value: &'a str, shape: &str) -> Result<(&'a str, &'a str), Error> {
    value
        .split_once('=')
        .filter(|(l, r)| !l.is_empty() && !r.is_empty())
        .ok_or_else(|| config_error(setting, value, format!("expected {shape}")))
}

impl RegistryConfig {
    /// Adds a `REGISTRY=MIRROR` setting (`--mirror`).
    pub fn add_mirror_setting(&mut self, value: &str) -> Result<(), Error> {
        let (from, to) = pair("mirror", value, "REGISTRY=MIRROR")?;
        self.mirrors.insert(from.to_owned(), to.to_owned());
        Ok(())
    }

    /// Adds a `REGISTRY=FILE` setting (`--registry-ca`).
    pub fn add_ca_setting(&mut self, value: &str) -> Result<(), Error> {
        let (registry, file) = pair("registry-ca", value, "REGISTRY=FILE")?;
        self.add_ca_file(registry, Path::new(file))
    }

    /// Trusts the PEM certificates in `file` for `registry`; the file must hold at least one.
    pub fn add_ca_file(&mut self, registry: &str, file: &Path) -> Result<(), Error> {
        let setting = format!("registry CA for {registry}");
        let shown = file.display().to_string();
        let pem = std::fs::read(file).map_err(|e| config_error(&setting, &shown, e.to_string()))?;
        crate::check_registry_ca(registry, &pem)
            .map_err(|e| config_error(&setting, &shown, e.to_string()))?;
        self.ca_certificates.insert(registry.to_owned(), pem);
        Ok(())
    }

    /// Whether `registry` is spoken to over plain HTTP: it is listed insecure, or it is on
    /// loopback and has no CA. (The nodes' containerd gets the same rule in `hosts.toml`.)
    pub fn plain_http(&self, registry: &str) -> bool {
        self.insecure.iter().any(|i| i == registry)
            || (crate::registry::is_loopback(registry)
                && !self.ca_certificates.contains_key(registry))
    }

    /// Gates requests by address: none to restricted addresses or `denied_networks` (CIDR
    /// strings, checked here), except to `private_registries` and the mirrors.
    pub fn gate_addresses(
        &mut self,
        private_registries: Vec<String>,
        denied_networks: &[String],
    ) -> Result<(), Error> {
        let denied_networks = denied_networks
            .iter()
            .map(|n| {
                n.parse().map_err(|e: wa8s_api::address::NetworkError| {
                    config_error("denied network", n, e.to_string())
                })
            })
            .collect::<Result<_, _>>()?;
        self.addresses = AddressPolicy::Gated {
            private_registries,
            denied_networks,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_are_not_pairs_or_networks_are_refused_with_the_setting_named() {
        let mut c = RegistryConfig::default();
        let e = c
            .add_mirror_setting("ghcr.io")
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("mirror \"ghcr.io\"") && e.contains("REGISTRY=MIRROR"),
            "{e}"
        );
        let e = c.add_ca_setting("=x.pem").expect_err("refused").to_string();
        assert!(e.contains("REGISTRY=FILE"), "{e}");
        let e = c
            .add_ca_file("r.example", Path::new("/nonexistent/ca.pem"))
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("/nonexistent/ca.pem") && e.contains("r.example"),
            "{e}"
        );
        let e = c
            .gate_addresses(vec![], &["10.96.0.0/12".into(), "10.244.0.0/33".into()])
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("10.244.0.0/33") && e.contains("prefix length"),
            "{e}"
        );
        assert_eq!(c.addresses, AddressPolicy::Open, "nothing half-applied");
        c.add_mirror_setting("ghcr.io=127.0.0.1:5000")
            .expect("valid");
        assert_eq!(c.mirrors["ghcr.io"], "127.0.0.1:5000");
    }
}
