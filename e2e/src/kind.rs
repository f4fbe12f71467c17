//! A real kind cluster (kind's podman provider, a node image built from upstream sources)
//! brought up and torn down by `e2e/scripts/kind.sh`, for tests that need what users run:
//! several nodes, systemd as each node's init, the kubelet's systemd cgroup driver, containerd
//! restarted through systemd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::kubectl::Kubectl;

/// Errors driving kind.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("running {what}: {source}")]
    Run {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {output}")]
    Failed { what: String, output: String },
    #[error("kind.sh up printed no {0}= line")]
    Missing(&'static str),
}

/// A running kind cluster; deleted (with its registry) on drop unless `WA8S_KEEP_KIND` is set.
#[derive(Debug)]
pub struct KindCluster {
    name: String,
    kubeconfig: PathBuf,
    kubectl: Kubectl,
    registry: String,
    registry_from_nodes: String,
}

fn script() -> PathBuf {
    crate::paths::repo_root().join("e2e/scripts/kind.sh")
}

/// Runs `cmd` with a deadline; its output (both streams) when it fails.
fn run(mut cmd: Command, what: &str, timeout: Duration) -> Result<String, Error> {
    // kind's podman provider, and this project's podman settings (runc; container ulimits
    // no higher than the host's, which has no CAP_SYS_RESOURCE).
    cmd.env("KIND_EXPERIMENTAL_PROVIDER", "podman").env(
        "CONTAINERS_CONF",
        crate::paths::repo_root().join("e2e/kind/containers.conf"),
    );
    let out = crate::process::run_with_timeout(cmd, timeout).map_err(|source| Error::Run {
        what: what.to_owned(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The tail holds the cause; kind and kubeadm are chatty before it.
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        return Err(Error::Failed {
            what: what.to_owned(),
            output: format!(
                "{}\n{}",
                stdout.trim(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
        });
    }
    Ok(stdout)
}

impl KindCluster {
    /// Creates cluster `name` with one control-plane node and `workers` workers (or reuses it
    /// when it is already up), and waits until every node and kube-system pod is Ready.
    pub fn up(name: &str, workers: u32, extra: &[&str]) -> Result<Self, Error> {
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .args(["up", "--name", name, "--workers", &workers.to_string()])
            .args(extra);
        let what = format!("kind.sh up --name {name}");
        let out = run(cmd, &what, Duration::from_secs(1500))?;
        let values: BTreeMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |k: &'static str| {
            values
                .get(k)
                .map(|v| v.to_string())
                .ok_or(Error::Missing(k))
        };
        let kubeconfig = PathBuf::from(get("kubeconfig")?);
        let kubectl = Kubectl::new(Path::new(&get("kubectl")?), &kubeconfig);
        Ok(KindCluster {
            name: name.to_owned(),
            kubeconfig,
            kubectl,
            registry: get("registry")?,
            registry_from_nodes: get("registry_from_nodes")?,
        })
    }

    /// The cluster's name (`kind get clusters` lists it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// kubectl for this cluster.
    pub fn kubectl(&self) -> &Kubectl {
        &self.kubectl
    }

    /// The kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The local registry as the host reaches it (push here), e.g. `127.0.0.1:5001`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The same registry as the nodes and pods reach it: the mirror of `ghcr.io` to give
    /// the chart (whose node installer then points the nodes' containerd at it).
    pub fn registry_from_nodes(&self) -> &str {
        &self.registry_from_nodes
    }

    /// This machine's address as the nodes and their pods reach it (the node network's
    /// gateway), for servers the test runs beside the cluster.
    pub fn host_from_nodes(&self) -> &str {
        self.registry_from_nodes
            .rsplit_once(':')
            .map_or(self.registry_from_nodes.as_str(), |(host, _)| host)
    }

    /// Loads image tarballs into every node, as `kind load image-archive` does for users.
    pub fn load(&self, tarballs: &[PathBuf]) -> Result<(), Error> {
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .args(["load", "--name", &self.name])
            .args(tarballs);
        run(cmd, "kind.sh load", Duration::from_secs(900)).map(drop)
    }

    /// The node containers' names (`NAME-control-plane`, `NAME-worker`, `NAME-worker2`, ...).
    pub fn nodes(&self) -> Result<Vec<String>, Error> {
        let out = self
            .kubectl
            .ok(&["get", "nodes", "-o", "name"])
            .map_err(|e| Error::Failed {
                what: "kubectl get nodes".into(),
                output: e.to_string(),
            })?;
        Ok(out
            .lines()
            .filter_map(|l| l.strip_prefix("node/"))
            .map(str::to_owned)
            .collect())
    }

    /// Runs `args` inside node container `node` (`podman exec`).
    pub fn exec(&self, node: &str, args: &[&str]) -> Result<String, Error> {
        let mut cmd = Command::new("podman");
        cmd.args(["exec", node]).args(args);
        run(
            cmd,
            &format!("podman exec {node} {}", args.join(" ")),
            Duration::from_secs(120),
        )
    }

    /// `podman stop` / `podman start` of a node container.
    pub fn podman(&self, args: &[&str]) -> Result<String, Error> {
        let mut cmd = Command::new("podman");
        cmd.args(args);
        run(
            cmd,
            &format!("podman {}", args.join(" ")),
            Duration::from_secs(180),
        )
    }

    /// `kind get clusters`.
    pub fn clusters() -> Result<Vec<String>, Error> {
        let kind = crate::paths::cache_dir().join(format!("bin/kind-{}/kind", kind_version()));
        let out = run(
            {
                let mut c = Command::new(kind);
                c.args(["get", "clusters"]);
                c
            },
            "kind get clusters",
            Duration::from_secs(60),
        )?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// Deletes the cluster and its registry (`kind.sh down`).
    pub fn down(&self) -> Result<(), Error> {
        Self::remove(&self.name)
    }

    /// Deletes cluster `name` and its registry if they exist (a run killed before its
    /// cleanup leaves them behind).
    pub fn remove(name: &str) -> Result<(), Error> {
        let mut cmd = Command::new("bash");
        cmd.arg(script()).args(["down", "--name", name]);
        run(cmd, "kind.sh down", Duration::from_secs(600)).map(drop)
    }
}

/// The kind version `e2e/scripts/versions.sh` pins.
pub fn kind_version() -> String {
    let text = std::fs::read_to_string(crate::paths::repo_root().join("e2e/scripts/versions.sh"))
        .unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix("KIND_VERSION=\"${KIND_VERSION:-")?;
            rest.split('}').next().map(str::to_owned)
        })
        .unwrap_or_else(|| "v0.33.0".to_owned())
}

impl Drop for KindCluster {
    fn drop(&mut self) {
        if std::env::var_os("WA8S_KEEP_KIND").is_some() {
            eprintln!("WA8S_KEEP_KIND: leaving kind cluster {} up", self.name);
            return;
        }
        if let Err(e) = self.down() {
            eprintln!("tearing down kind cluster {}: {e}", self.name);
        }
    }
}
