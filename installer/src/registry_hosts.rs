//! The node's registry hosts: containerd's `hosts.toml` for each registry the deployment
//! names, written from the same [`RegistryConfig`] the operator resolves tags with (the chart's
//! `operator.mirrors`, `operator.insecureRegistries` and `operator.registryCAs`), so pulls on
//! the nodes go where the operator's resolves went and an air-gapped cluster needs no hand
//! edits. containerd reads these files at each pull: writing them needs no restart.
//!
//! For a registry `R` the installer writes `<hosts dir>/R/hosts.toml`:
//! - `server`: `R` itself (`docker.io`'s is `registry-1.docker.io`), over plain HTTP when the
//!   configuration says so ([`RegistryConfig::plain_http`]), with `ca` when `R` has a CA;
//! - its mirror, if any, as the host tried first for pull and resolve, with its own CA;
//! - a CA is written beside it as `wa8s-ca.crt`.
//!
//! Only files the installer wrote are ever changed or removed (see [`crate::node`]).

use std::path::{Path, PathBuf};

use wa8s_oci::RegistryConfig;

/// Where hosts files go when containerd's configuration names no directory (containerd's
/// documented location, which the installer then sets as `config_path`).
pub const DEFAULT_HOSTS_DIR: &str = "/etc/containerd/certs.d";
/// A registry's CA file, beside its `hosts.toml`.
pub const CA_FILE: &str = "wa8s-ca.crt";

/// Why the registry hosts cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "registry {registry:?} cannot name a registry hosts directory: expected host[:port] (letters, digits, '.', '-', ':', '[', ']')"
    )]
    BadRegistry { registry: String },
}

/// One file the installer wants on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsFile {
    /// Node path.
    pub path: PathBuf,
    pub text: String,
}

/// `host[:port]` only: the name becomes a directory, so no `/`, no `..`.
fn check(registry: &str) -> Result<(), Error> {
    let ok = !registry.is_empty()
        && !registry.starts_with('.')
        && !registry.contains("..")
        && registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:[]".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRegistry {
            registry: registry.to_owned(),
        })
    }
}

fn url(config: &RegistryConfig, host: &str) -> String {
    let scheme = if config.plain_http(host) {
        "http"
    } else {
        "https"
    };
    // Docker Hub's name is not its API's host.
    let host = if host == "docker.io" {
        "registry-1.docker.io"
    } else {
        host
    };
    format!("{scheme}://{host}")
}

fn ca_path(dir: &Path, registry: &str) -> PathBuf {
    dir.join(registry).join(CA_FILE)
}

/// The files for `config` in hosts directory `dir` (a node path), sorted by path. Empty when
/// the configuration names no mirror, plain-HTTP registry or CA.
pub fn files(config: &RegistryConfig, dir: &Path) -> Result<Vec<HostsFile>, Error> {
    let mut registries: Vec<&str> = config
        .mirrors
        .keys()
        .chain(config.mirrors.values())
        .chain(&config.insecure)
        .chain(config.ca_certificates.keys())
        .map(String::as_str)
        .collect();
    registries.sort_unstable();
    registries.dedup();
    let mut out = Vec::new();
    for registry in registries {
        check(registry)?;
        let mirror = config.mirrors.get(registry);
        let has_ca = config.ca_certificates.contains_key(registry);
        // A mirror with nothing of its own needs no file: its registry's file names it.
        if mirror.is_none() && !has_ca && !config.plain_http(registry) {
            continue;
        }
        let mut text = format!(
            "# Written by the wa8s node installer from the chart's registry settings; it is\n# removed or given back on uninstall. Edit the chart values, not this file.\nserver = {:?}\n",
            url(config, registry)
        );
        if has_ca {
            text.push_str(&format!(
                "ca = {:?}\n",
                ca_path(dir, registry).to_string_lossy()
            ));
        }
        if let Some(mirror) = mirror {
            text.push_str(&format!(
                "\n[host.{:?}]\n  capabilities = [\"pull\", \"resolve\"]\n",
                url(config, mirror)
            ));
            if config.ca_certificates.contains_key(mirror.as_str()) {
                text.push_str(&format!(
                    "  ca = {:?}\n",
                    ca_path(dir, mirror).to_string_lossy()
                ));
            }
        }
        out.push(HostsFile {
            path: dir.join(registry).join("hosts.toml"),
            text,
        });
        if let Some(pem) = config.ca_certificates.get(registry) {
            out.push(HostsFile {
                path: ca_path(dir, registry),
                // Checked as PEM certificates when the configuration was read.
                text: String::from_utf8_lossy(pem).into_owned(),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_of_ghcr_on_a_plain_http_registry_gets_two_files() {
        let mut c = RegistryConfig::default();
        c.add_mirror_setting("ghcr.io=10.89.0.1:5000")
            .expect("a mirror setting");
        c.insecure.push("10.89.0.1:5000".into());
        let f = files(&c, Path::new("/etc/containerd/certs.d")).expect("files");
        let paths: Vec<_> = f.iter().map(|f| f.path.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "/etc/containerd/certs.d/10.89.0.1:5000/hosts.toml",
                "/etc/containerd/certs.d/ghcr.io/hosts.toml"
            ]
        );
        assert!(f[0].text.contains("server = \"http://10.89.0.1:5000\""));
        assert!(f[1].text.contains("server = \"https://ghcr.io\""));
        assert!(f[1].text.contains("[host.\"http://10.89.0.1:5000\"]"));
    }

    #[test]
    fn a_registry_name_that_is_not_a_host_is_refused_by_name() {
        let mut c = RegistryConfig::default();
        c.insecure.push("../../etc".into());
        let e = files(&c, Path::new("/d")).expect_err("refused").to_string();
        assert!(e.contains("\"../../etc\""), "{e}");
        let mut c = RegistryConfig::default();
        c.add_mirror_setting("ghcr.io=mirror.example/ghcr")
            .expect("a mirror setting");
        assert!(files(&c, Path::new("/d")).is_err());
    }

    #[test]
    fn nothing_configured_means_no_files() {
        assert!(
            files(&RegistryConfig::default(), Path::new("/d"))
                .expect("files")
                .is_empty()
        );
    }
}
