//! A real distribution registry (Debian's `docker-registry`) on loopback, for tests.
//!
//! Each [`Registry`] gets its own storage directory and port, runs attached (it dies with the
//! test process), and is stopped by PID when dropped. Its log holds one access-log line per
//! request, which tests count to prove what was (not) fetched.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{self, Lifetime};
use crate::token::{self, TokenRequest, TokenServer};

/// What can go wrong starting a registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("docker-registry is not installed (e2e/scripts/prerequisites.sh installs it)")]
    Missing,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the registry on {addr} did not answer within 20s; its log:\n{log}")]
    NotReady { addr: String, log: String },
}

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    pid: u32,
    addr: String,
    dir: PathBuf,
    ca_pem: Option<String>,
    token: Option<TokenServer>,
    _tmp: Option<tempfile::TempDir>,
}

/// Basic-auth users (`htpasswd`, bcrypt).
#[derive(Debug, Clone, Default)]
pub struct Users(pub Vec<(String, String)>);

/// How the registry authenticates clients.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    /// Anyone may push and pull.
    #[default]
    Anonymous,
    /// HTTP basic auth against an htpasswd file.
    Basic(Users),
    /// Bearer tokens from a token server (the GHCR flow): anonymous pulls, pushes for users.
    Token(Users),
}

/// How to start a registry.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub auth: Auth,
    /// Serve HTTPS with a certificate from a fresh CA (see [`Registry::ca_pem`]).
    pub tls: bool,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

impl Registry {
    /// Starts an anonymous registry in a fresh temporary directory.
    pub fn start() -> Result<Self, Error> {
        Self::start_with(Users::default())
    }

    /// Starts a registry requiring basic auth for `users` (anonymous if empty).
    pub fn start_with(users: Users) -> Result<Self, Error> {
        let auth = if users.0.is_empty() {
            Auth::Anonymous
        } else {
            Auth::Basic(users)
        };
        Self::start_with_options(Options { auth, tls: false })
    }

    /// Starts a registry as `options` say, in a fresh temporary directory.
    pub fn start_with_options(options: Options) -> Result<Self, Error> {
        let tmp = tempfile::Builder::new()
            .prefix("wa8s-registry-")
            .tempdir()
            .map_err(io("creating the registry directory"))?;
        let dir = tmp.path().to_path_buf();
        let mut reg = Self::start_in(&dir, &options)?;
        reg._tmp = Some(tmp);
        Ok(reg)
    }

    /// Starts a registry keeping its storage and log in `dir`.
    pub fn start_in(dir: &Path, options: &Options) -> Result<Self, Error> {
        let binary = which("docker-registry").ok_or(Error::Missing)?;
        std::fs::create_dir_all(dir.join("storage")).map_err(io("creating storage"))?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut auth = String::new();
        let mut token = None;
        if let Auth::Token(users) = &options.auth {
            let server =
                TokenServer::start(users.0.clone()).map_err(io("starting the token server"))?;
            let bundle = dir.join("token-signer.pem");
            std::fs::write(&bundle, server.cert_pem()).map_err(io("writing token-signer.pem"))?;
            auth = format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                server.realm(),
                token::SERVICE,
                token::ISSUER,
                bundle.display()
            );
            token = Some(server);
        }
        if let Auth::Basic(users) = &options.auth {
            let htpasswd = dir.join("htpasswd");
            let _ = std::fs::remove_file(&htpasswd);
            for (i, (user, pass)) in users.0.iter().enumerate() {
                let mut cmd = Command::new("htpasswd");
                cmd.arg("-bB");
                if i == 0 {
                    cmd.arg("-c");
                }
                cmd.arg(&htpasswd).arg(user).arg(pass);
                let out = process::run_with_timeout(cmd, Duration::from_secs(30))
                    .map_err(io("running htpasswd"))?;
                if !out.status.success() {
                    return Err(Error::Io {
                        what: "htpasswd".into(),
                        source: std::io::Error::other(
                            String::from_utf8_lossy(&out.stderr).into_owned(),
                        ),
                    });
                }
            }
            auth = format!(
                "auth:\n  htpasswd:\n    realm: wa8s-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let mut tls = String::new();
        let mut ca_pem = None;
        if options.tls {
            let (ca, cert, key) = serving_certificate().map_err(|e| Error::Io {
                what: "creating the registry's certificate".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
            let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
            std::fs::write(&cert_path, cert).map_err(io("writing tls.crt"))?;
            std::fs::write(&key_path, key).map_err(io("writing tls.key"))?;
            tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert_path.display(),
                key_path.display()
            );
            ca_pem = Some(ca);
        }
        let config = config(dir, &addr, &format!("{tls}{auth}"));
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).map_err(io("writing config.yml"))?;
        let mut cmd = Command::new(&binary);
        cmd.arg("serve").arg(&config_path);
        let log = dir.join("registry.log");
        let pid = process::spawn(cmd, &log, Lifetime::Attached)
            .map_err(io("starting docker-registry"))?;
        let reg = Registry {
            pid,
            addr: addr.clone(),
            dir: dir.to_path_buf(),
            ca_pem,
            token,
            _tmp: None,
        };
        let tls = options.tls;
        let ready = process::eventually(Duration::from_secs(20), Duration::from_millis(50), || {
            if tls {
                // Speaking TLS here would need a client; the registry binds only once its
                // configuration (certificate included) has loaded, and logs that it listens.
                TcpStream::connect(&addr).ok()?;
                reg.log().contains("listening on").then_some(200)
            } else {
                crate::http::get(&addr, "/v2/", Duration::from_secs(2))
                    .ok()
                    .map(|(status, _)| status)
                    .filter(|s| *s == 200 || *s == 401)
            }
        });
        if ready.is_none() {
            return Err(Error::NotReady {
                addr,
                log: reg.log(),
            });
        }
        Ok(reg)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The CA that signed the registry's certificate (PEM), when it serves TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Requests the token server has seen, when the registry uses token auth.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.token
            .as_ref()
            .map(TokenServer::requests)
            .unwrap_or_default()
    }

    /// Where blobs live on disk (`docker/registry/v2/blobs/sha256/<ab>/<hex>/data`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// Requests for manifests and blobs of `repository` so far, by method (from the access
    /// log): what resolving and pulling cost the registry.
    pub fn content_requests(&self, repository: &str) -> std::collections::BTreeMap<String, usize> {
        let manifests = format!(" /v2/{repository}/manifests/");
        let blobs = format!(" /v2/{repository}/blobs/");
        let mut counts = std::collections::BTreeMap::new();
        for line in self.log().lines() {
            let Some((_, request)) = line.split_once("] \"") else {
                continue;
            };
            let Some((method, rest)) = request.split_once(' ') else {
                continue;
            };
            let rest = format!(" {rest}");
            let what = if rest.starts_with(&manifests) {
                "manifest"
            } else if rest.starts_with(&blobs) {
                "blob"
            } else {
                continue;
            };
            *counts.entry(format!("{method} {what}")).or_insert(0) += 1;
        }
        counts
    }

    /// Successful GETs of the blob `digest` so far (from the access log).
    pub fn blob_fetches(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest} HTTP");
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET ") && l.contains(&needle) && l.contains("\" 200 "))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        process::terminate(self.pid, None, Duration::from_secs(5));
    }
}

/// A fresh CA and a serving certificate for 127.0.0.1 and localhost: (ca, cert, key) PEM.
fn serving_certificate() -> Result<(String, String, String), rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "wa8s-test-registry-ca");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let mut server = CertificateParams::new(vec!["localhost".to_owned()])?;
    server
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    server
        .distinguished_name
        .push(DnType::CommonName, "wa8s-test-registry");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = server.signed_by(&key, &ca)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

/// A registry configuration: filesystem storage under `dir/storage` (deletes allowed), an
/// access log, listening on `addr`; `extra` is appended (TLS under `http:`, then `auth:`).
pub(crate) fn config(dir: &Path, addr: &str, extra: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n{extra}",
        dir.join("storage").display()
    )
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

/// Pushes `wasm` with the `wa8s` CLI at `wa8s` as `reference`; returns the manifest digest it
/// printed.
pub fn push_with_cli(wa8s: &Path, wasm: &[u8], reference: &str) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("component.wasm");
    std::fs::write(&file, wasm)?;
    let mut cmd = Command::new(wa8s);
    cmd.arg("push").arg(&file).arg(reference);
    let out = process::run_with_timeout(cmd, Duration::from_secs(60))?;
    anyhow::ensure!(
        out.status.success(),
        "wa8s push {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("sha256:"))
        .map(|l| l.trim().to_owned())
        .ok_or_else(|| anyhow::anyhow!("wa8s push printed no digest: {stdout}"))
}
