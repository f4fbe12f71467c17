//! Registry credentials: explicit, from a docker config file (auths and credential helpers),
//! or anonymous. The bearer-token exchange registries such as GHCR use is done by
//! oci-client with whatever these yield.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::Error;

/// Which docker `config.json` to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DockerConfigSource {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, if it exists.
    #[default]
    Default,
    /// This file (it must exist).
    File(PathBuf),
    /// None: only explicit credentials and pull secrets (the operator, which must use what
    /// each object grants and nothing of its own).
    Ignored,
}

/// Where credentials come from, in order of precedence.
#[derive(Clone, Default)]
pub struct Credentials {
    /// Used for every registry when set.
    pub explicit: Option<(String, String)>,
    /// Kubernetes image pull secrets (`kubernetes.io/dockerconfigjson`): `(where from, JSON)`.
    /// Only their `auths` are read: a secret must never make the reader run a credential
    /// helper. Consulted in order, before `docker_config`.
    pub pull_secrets: Vec<(String, String)>,
    /// A docker `config.json` (`auths`, `credHelpers`, `credsStore`). `None`: the default
    /// location (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`) if it exists.
    pub docker_config: DockerConfigSource,
}

// Not derived: a password or a pull secret's JSON must not reach a log line.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "explicit",
                &self.explicit.as_ref().map(|(user, _)| (user, "…")),
            )
            .field(
                "pull_secrets",
                &self
                    .pull_secrets
                    .iter()
                    .map(|(origin, _)| origin)
                    .collect::<Vec<_>>(),
            )
            .field("docker_config", &self.docker_config)
            .finish()
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperReply {
    username: String,
    secret: String,
}

impl Credentials {
    /// The credentials to present to `registry` (`host[:port]`).
    pub fn for_registry(&self, registry: &str) -> Result<RegistryAuth, Error> {
        if let Some((user, pass)) = &self.explicit {
            return Ok(RegistryAuth::Basic(user.clone(), pass.clone()));
        }
        for (origin, json) in &self.pull_secrets {
            match from_config_text(json, origin, registry, false)? {
                RegistryAuth::Anonymous => continue,
                found => return Ok(found),
            }
        }
        let path = match &self.docker_config {
            DockerConfigSource::File(p) => p.clone(),
            DockerConfigSource::Ignored => return Ok(RegistryAuth::Anonymous),
            DockerConfigSource::Default => match default_docker_config() {
                Some(p) if p.exists() => p,
                _ => return Ok(RegistryAuth::Anonymous),
            },
        };
        from_docker_config(&path, registry)
    }
}

fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// `https://index.docker.io/v1/` and `ghcr.io` alike become a bare host.
fn normalize(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

fn from_docker_config(path: &Path, registry: &str) -> Result<RegistryAuth, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Credentials(format!("reading {}: {e}", path.display())))?;
    from_config_text(&text, &path.display().to_string(), registry, true)
}

fn from_config_text(
    text: &str,
    origin: &str,
    registry: &str,
    helpers: bool,
) -> Result<RegistryAuth, Error> {
    let config: DockerConfig = serde_json::from_str(text)
        .map_err(|e| Error::Credentials(format!("{origin} is not a docker config: {e}")))?;
    let aliases: &[&str] = if registry == "docker.io" {
        &["docker.io", "index.docker.io", "registry-1.docker.io"]
    } else {
        &[]
    };
    let matches = |key: &str| normalize(key) == registry || aliases.contains(&normalize(key));
    if helpers && let Some((_, helper)) = config.cred_helpers.iter().find(|(k, _)| matches(k)) {
        return helper_get(helper, registry);
    }
    if let Some((key, entry)) = config.auths.iter().find(|(k, _)| matches(k)) {
        if let Some(token) = &entry.identity_token {
            // An identity token is exchanged like a password with the `<token>` user.
            return Ok(RegistryAuth::Basic("<token>".into(), token.clone()));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
        }
        if let Some(auth) = &entry.auth {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| {
                    Error::Credentials(format!("{origin}: auths[{key:?}].auth is not base64: {e}"))
                })?;
            let text = String::from_utf8(decoded).map_err(|_| {
                Error::Credentials(format!("{origin}: auths[{key:?}].auth is not UTF-8"))
            })?;
            let Some((u, p)) = text.split_once(':') else {
                return Err(Error::Credentials(format!(
                    "{origin}: auths[{key:?}].auth is not user:password"
                )));
            };
            return Ok(RegistryAuth::Basic(u.into(), p.into()));
        }
    }
    if helpers && let Some(store) = &config.creds_store {
        return helper_get(store, registry);
    }
    Ok(RegistryAuth::Anonymous)
}

/// Asks `docker-credential-<helper>` (the docker credential-helper protocol).
fn helper_get(helper: &str, registry: &str) -> Result<RegistryAuth, Error> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Credentials(format!("running {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(registry.as_bytes())
            .map_err(|e| Error::Credentials(format!("writing to {program}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Credentials(format!("running {program}: {e}")))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout);
        if said.contains("credentials not found") {
            return Ok(RegistryAuth::Anonymous);
        }
        return Err(Error::Credentials(format!(
            "{program} get {registry} failed: {}{}",
            said.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Credentials(format!("{program} answered something else: {e}")))?;
    Ok(RegistryAuth::Basic(reply.username, reply.secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(auth: RegistryAuth) -> Option<(String, String)> {
        match auth {
            RegistryAuth::Basic(u, p) => Some((u, p)),
            _ => None,
        }
    }

    #[test]
    fn docker_config_auths_are_matched_by_host_in_any_spelling() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(Error::io("tmp"))?;
        let path = dir.path().join("config.json");
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths": {{"https://127.0.0.1:5000/v2/": {{"auth": "{encoded}"}},
                    "ghcr.io": {{"username": "bob", "password": "pw"}}}}}}"#
            ),
        )
        .map_err(Error::io("write"))?;
        let creds = Credentials {
            explicit: None,
            pull_secrets: Vec::new(),
            docker_config: DockerConfigSource::File(path),
        };
        assert_eq!(
            basic(creds.for_registry("127.0.0.1:5000")?),
            Some(("alice".into(), "s3cret".into()))
        );
        assert_eq!(
            basic(creds.for_registry("ghcr.io")?),
            Some(("bob".into(), "pw".into()))
        );
        assert!(matches!(
            creds.for_registry("quay.io")?,
            RegistryAuth::Anonymous
        ));
        Ok(())
    }

    #[test]
    fn debug_output_names_where_credentials_come_from_but_not_the_secrets() {
        let c = Credentials {
            explicit: Some(("me".into(), "hunter2".into())),
            pull_secrets: vec![(
                "imagePullSecret ns/s".into(),
                r#"{"auths":{"x":{"auth":"c2VjcmV0"}}}"#.into(),
            )],
            docker_config: DockerConfigSource::Ignored,
        };
        let shown = format!("{c:?}");
        assert!(
            shown.contains("me") && shown.contains("imagePullSecret ns/s"),
            "{shown}"
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("c2VjcmV0"),
            "{shown}"
        );
    }

    #[test]
    fn pull_secrets_give_their_auths_but_never_run_a_credential_helper() -> Result<(), Error> {
        let secret = r#"{"auths": {"ghcr.io": {"username": "ci", "password": "t0ken"}},
                         "credHelpers": {"quay.io": "evil"}, "credsStore": "evil"}"#;
        let creds = Credentials {
            explicit: None,
            pull_secrets: vec![("secret apps/regcred".into(), secret.into())],
            docker_config: DockerConfigSource::File("/nonexistent/config.json".into()),
        };
        assert_eq!(
            basic(creds.for_registry("ghcr.io")?),
            Some(("ci".into(), "t0ken".into()))
        );
        // quay.io is named only by a helper: the secret yields nothing, and the next source
        // (a missing docker config file) is reported rather than a helper being run.
        let err = creds.for_registry("quay.io").expect_err("no helper run");
        assert!(
            err.to_string().contains("/nonexistent/config.json"),
            "{err}"
        );
        let broken = Credentials {
            explicit: None,
            pull_secrets: vec![("secret apps/broken".into(), "{".into())],
            docker_config: DockerConfigSource::Default,
        };
        let err = broken.for_registry("ghcr.io").expect_err("broken");
        assert!(err.to_string().contains("secret apps/broken"), "{err}");
        Ok(())
    }

    #[test]
    fn a_broken_docker_config_is_a_clear_error() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(Error::io("tmp"))?;
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"auths": {"ghcr.io": {"auth": "%%%"}}}"#)
            .map_err(Error::io("write"))?;
        let creds = Credentials {
            explicit: None,
            pull_secrets: Vec::new(),
            docker_config: DockerConfigSource::File(path),
        };
        let err = creds.for_registry("ghcr.io").expect_err("refused");
        assert!(
            err.to_string()
                .contains("auths[\"ghcr.io\"].auth is not base64"),
            "{err}"
        );
        Ok(())
    }
}
