//! The real `kubectl`, pointed at a test control plane, with a deadline on every call.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::paths::repo_root;
use crate::process::{self, eventually};

/// Deadline for one kubectl invocation that sets no `--timeout=` of its own.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long past its own `--timeout=` a kubectl call (wait, delete, rollout status) may run
/// before it is killed: kubectl's timeout is the one that fails with a useful message.
const TIMEOUT_MARGIN: Duration = Duration::from_secs(30);

/// The deadline for a kubectl call with `args`: its own `--timeout=` plus a margin, or the
/// default. A wait for minutes must not be cut off at the default.
fn call_timeout(args: &[&str]) -> Duration {
    args.iter()
        .filter_map(|a| a.strip_prefix("--timeout="))
        .filter_map(go_duration)
        .max()
        .map_or(CALL_TIMEOUT, |t| (t + TIMEOUT_MARGIN).max(CALL_TIMEOUT))
}

/// Parses the Go durations tests pass to kubectl: `90s`, `5m`, `1h`, `2m30s`.
fn go_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut number = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().ok()?;
        number.clear();
        total += Duration::from_secs(match c {
            's' => n,
            'm' => n * 60,
            'h' => n * 3600,
            _ => return None,
        });
    }
    // A bare number is seconds to kubectl only for some flags; refuse to guess.
    number.is_empty().then_some(total).filter(|t| !t.is_zero())
}

/// Errors from running kubectl.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kubectl could not be run or did not finish in time.
    #[error("running kubectl {args}: {source}")]
    Run {
        /// Its arguments.
        args: String,
        /// The cause.
        source: std::io::Error,
    },
    /// kubectl ran and failed.
    #[error("kubectl {args} failed: {stderr}")]
    Failed {
        /// Its arguments.
        args: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A condition was not reached in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

/// What one kubectl call printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Whether it exited 0.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// kubectl with a fixed kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// The kubectl at `binary`, talking to the cluster in `kubeconfig`.
    pub fn new(binary: &Path, kubeconfig: &Path) -> Self {
        Kubectl {
            binary: binary.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
        }
    }

    /// Runs kubectl with `args` (and `stdin`, if given); a non-zero exit is not an error here.
    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<Output, Error> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--request-timeout=30s")
            .args(args);
        let timeout = call_timeout(args);
        let out = process::run_with_input(cmd, stdin.map(|s| s.as_bytes().to_vec()), timeout)
            .map_err(|source| Error::Run {
                args: args.join(" "),
                source,
            })?;
        Ok(Output {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs kubectl with `args`; a non-zero exit is not an error here.
    pub fn run(&self, args: &[&str]) -> Result<Output, Error> {
        self.run_with_stdin(args, None)
    }

    /// Runs kubectl with `args` and returns stdout; a non-zero exit is an error.
    pub fn ok(&self, args: &[&str]) -> Result<String, Error> {
        let out = self.run(args)?;
        if out.success {
            Ok(out.stdout)
        } else {
            Err(Error::Failed {
                args: args.join(" "),
                stderr: out.stderr,
            })
        }
    }

    /// Server-side applies `manifest` (YAML or JSON) in `namespace`.
    pub fn apply(&self, namespace: &str, manifest: &str) -> Result<Output, Error> {
        self.run_with_stdin(
            &[
                "apply",
                "--server-side",
                "--field-manager=wa8s-e2e",
                "-n",
                namespace,
                "-f",
                "-",
            ],
            Some(manifest),
        )
    }

    /// Installs (or updates) the committed WebAssembly CRD and waits until it is served.
    pub fn install_crd(&self) -> Result<(), Error> {
        let crd = repo_root().join("crds/webassembly.yaml");
        self.ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=wa8s-e2e",
            "-f",
            &crd.to_string_lossy(),
        ])?;
        self.wait_crd_established()
    }

    /// Waits until the WebAssembly CRD is served. Polled rather than `kubectl wait`: a CRD
    /// the API server has not processed yet has no conditions at all, which
    /// `kubectl wait --for=condition` reports as an error instead of waiting.
    pub fn wait_crd_established(&self) -> Result<(), Error> {
        self.eventually(
            Duration::from_secs(60),
            "the WebAssembly CRD to be established",
            |k| {
                k.ok(&[
                    "get",
                    "crd/webassemblies.wa8s.reconciler.io",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
                ])
                .ok()
                .filter(|s| s.trim() == "True")
            },
        )
        .map(drop)
    }

    /// Creates a namespace with a unique name starting with `prefix`; it is deleted when
    /// the returned guard drops.
    pub fn namespace(&self, prefix: &str) -> Result<Namespace, Error> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!(
            "{prefix}-{:x}{:x}{:x}",
            std::process::id() % 0x1000,
            SEQ.fetch_add(1, Ordering::Relaxed),
            nanos % 0x10000
        );
        self.ok(&["create", "namespace", &name])?;
        Ok(Namespace {
            name,
            kubectl: self.clone(),
        })
    }

    /// `kubectl port-forward -n namespace target :remote_port` (e.g. `svc/name`), running
    /// until the returned guard drops. Waits until it forwards.
    pub fn port_forward(
        &self,
        namespace: &str,
        target: &str,
        remote_port: u16,
    ) -> Result<PortForward, Error> {
        use std::io::{BufRead, BufReader};
        let args = format!("port-forward -n {namespace} {target} :{remote_port}");
        let run_err = |source| Error::Run {
            args: args.clone(),
            source,
        };
        let mut child = Command::new(&self.binary)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(["port-forward", "-n", namespace, target])
            .arg(format!(":{remote_port}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(run_err)?;
        // "Forwarding from 127.0.0.1:PORT -> REMOTE" once it listens; read it off a thread
        // so a silent kubectl cannot hang the test.
        let stdout = child.stdout.take();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Some(out) = stdout else { return };
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let port = line
                    .strip_prefix("Forwarding from 127.0.0.1:")
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|p| p.parse::<u16>().ok());
                if let Some(p) = port {
                    let _ = tx.send(p);
                }
            }
        });
        match rx.recv_timeout(CALL_TIMEOUT) {
            Ok(port) => Ok(PortForward {
                child,
                addr: format!("127.0.0.1:{port}"),
            }),
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().map_err(run_err)?;
                Err(Error::Failed {
                    args,
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            }
        }
    }

    /// Retries `check` until it returns `Some`, for up to `timeout`.
    pub fn eventually<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&Kubectl) -> Option<T>,
    ) -> Result<T, Error> {
        eventually(timeout, Duration::from_millis(250), || check(self))
            .ok_or_else(|| Error::Timeout(timeout, what.to_owned()))
    }
}

/// A running `kubectl port-forward`; stopped on drop.
#[derive(Debug)]
pub struct PortForward {
    child: std::process::Child,
    addr: String,
}

impl PortForward {
    /// The local `127.0.0.1:port` that forwards.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A namespace owned by one test; deleted (without waiting) on drop.
#[derive(Debug)]
pub struct Namespace {
    name: String,
    kubectl: Kubectl,
}

impl Namespace {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self
            .kubectl
            .run(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_with_its_own_timeout_is_given_that_long_plus_a_margin() {
        let args = ["wait", "--for=condition=Ready", "--timeout=240s", "x"];
        assert_eq!(call_timeout(&args), Duration::from_secs(270));
        assert_eq!(
            call_timeout(&["delete", "--timeout=2m30s"]),
            Duration::from_secs(180)
        );
    }

    #[test]
    fn calls_without_a_timeout_or_with_a_short_one_get_the_default() {
        assert_eq!(call_timeout(&["get", "pods"]), CALL_TIMEOUT);
        assert_eq!(call_timeout(&["wait", "--timeout=5s"]), CALL_TIMEOUT);
        assert_eq!(call_timeout(&["wait", "--timeout=forever"]), CALL_TIMEOUT);
        assert_eq!(call_timeout(&["wait", "--timeout=10"]), CALL_TIMEOUT);
    }
}
