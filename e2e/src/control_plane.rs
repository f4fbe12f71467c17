//! A real Kubernetes control plane (etcd + kube-apiserver) on loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::binaries;
use crate::cleanup::{STOP_GRACE, stop_at_exit, sweep_stale};
use crate::kubectl::Kubectl;
use crate::paths::cache_dir;
use crate::pki::Pki;
use crate::process::{self, Lifetime, eventually};

pub use crate::cleanup::{is_up, stop_state_dir};
pub use crate::error::Error;
pub(crate) use crate::error::io_err;

/// How long etcd and the API server get to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Cluster IP of the `kubernetes` Service (first address of the service range).
const SERVICE_CIDR: &str = "10.96.0.0/16";
const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

/// A running etcd + kube-apiserver pair and the files that describe it.
///
/// Guarantees: every process it started is stopped by PID on [`ControlPlane::stop`] or drop
/// (attached ones also die with the test process). Caveat: the state directory is removed on
/// stop, so logs of a passing run are not kept.
#[derive(Debug)]
pub struct ControlPlane {
    state_dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    processes: Vec<Managed>,
    lifetime: Lifetime,
    kubectl: PathBuf,
}

#[derive(Debug, Clone)]
struct Managed {
    name: String,
    pid: u32,
    exe: PathBuf,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver with state under `state_dir` (created, and emptied if
    /// it holds a stopped control plane), and waits until the API server is ready.
    pub fn start(state_dir: &Path, lifetime: Lifetime) -> Result<Self, Error> {
        let bins = binaries::ensure(&["etcd", "kube-apiserver", "kubectl"])?;
        let (etcd, apiserver) = (&bins["etcd"], &bins["kube-apiserver"]);
        stop_state_dir(state_dir);
        std::fs::create_dir_all(state_dir.join("pki"))
            .map_err(io_err(format!("creating {}", state_dir.display())))?;
        let state_dir = std::fs::canonicalize(state_dir)
            .map_err(io_err(format!("resolving {}", state_dir.display())))?;
        let pki = Pki::generate(&state_dir.join("pki"), KUBERNETES_SERVICE_IP)?;
        let [client_port, peer_port, api_port] = free_ports()?;

        let mut cp = ControlPlane {
            kubeconfig: state_dir.join("kubeconfig"),
            server: format!("https://127.0.0.1:{api_port}"),
            state_dir,
            processes: Vec::new(),
            lifetime,
            kubectl: bins["kubectl"].clone(),
        };

        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(etcd);
        cmd.args([
            "--name",
            "default",
            "--log-level",
            "warn",
            "--unsafe-no-fsync",
        ])
        .arg(format!(
            "--data-dir={}",
            cp.state_dir.join("etcd").display()
        ))
        .arg(format!("--listen-client-urls={etcd_url}"))
        .arg(format!("--advertise-client-urls={etcd_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=default={peer_url}"));
        cp.spawn("etcd", etcd, cmd)?;
        cp.wait_healthy("etcd", || etcd_healthy(client_port))?;

        let mut cmd = Command::new(apiserver);
        cmd.arg(format!("--etcd-servers={etcd_url}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--cert-dir={}", cp.state_dir.join("pki").display()))
            .arg(format!("--tls-cert-file={}", pki.apiserver_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.apiserver_key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
            // For logs, exec and port-forward through the kubelet.
            .arg(format!(
                "--kubelet-client-certificate={}",
                pki.admin_cert.display()
            ))
            .arg(format!("--kubelet-client-key={}", pki.admin_key.display()))
            // The node's name is not in DNS; its address is in its status.
            .arg("--kubelet-preferred-address-types=InternalIP")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                pki.service_account_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.service_account_key.display()
            ))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            // The aggregation layer (metrics.k8s.io from metrics-server), reaching extension
            // servers at their endpoints' addresses, so it needs no kube-proxy.
            .arg(format!(
                "--requestheader-client-ca-file={}",
                pki.front_proxy_ca.display()
            ))
            .arg(format!(
                "--requestheader-allowed-names={}",
                crate::pki::FRONT_PROXY_CLIENT
            ))
            .args([
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--enable-aggregator-routing=true",
            ])
            .arg(format!(
                "--proxy-client-cert-file={}",
                pki.front_proxy_client_cert.display()
            ))
            .arg(format!(
                "--proxy-client-key-file={}",
                pki.front_proxy_client_key.display()
            ))
            .args(["--authorization-mode=Node,RBAC", "--allow-privileged=true"])
            .args(["--profiling=false", "--v=1"]);
        cp.spawn("kube-apiserver", apiserver, cmd)?;
        cp.write_kubeconfig(&pki)?;
        let kubectl = cp.kubectl();
        cp.wait_healthy("kube-apiserver", || apiserver_ready(&kubectl))?;
        Ok(cp)
    }

    /// The control plane every test in this process shares, started on first use under
    /// `$WA8S_CACHE/run/test-<pid>`. Leftovers of earlier runs whose process is gone are
    /// stopped and removed first.
    pub fn shared() -> Result<&'static ControlPlane, String> {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let run = cache_dir().join("run");
                sweep_stale(&run);
                let dir = run.join(format!("test-{}", std::process::id()));
                let cp =
                    ControlPlane::start(&dir, Lifetime::Attached).map_err(|e| e.to_string())?;
                stop_at_exit(cp.state_dir());
                Ok(cp)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Like [`ControlPlane::shared`], with kube-controller-manager running too (garbage
    /// collection, Deployment → ReplicaSet → Pod, HPAs), for tests that need those.
    pub fn shared_with_controller_manager() -> Result<&'static ControlPlane, String> {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let run = cache_dir().join("run");
                sweep_stale(&run);
                let dir = run.join(format!("test-{}-kcm", std::process::id()));
                let mut cp =
                    ControlPlane::start(&dir, Lifetime::Attached).map_err(|e| e.to_string())?;
                cp.start_controller_manager().map_err(|e| e.to_string())?;
                stop_at_exit(cp.state_dir());
                Ok(cp)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Starts kube-controller-manager against this API server and waits until its
    /// controllers run.
    pub fn start_controller_manager(&mut self) -> Result<(), Error> {
        let bins = binaries::ensure(&["kube-controller-manager"])?;
        let exe = &bins["kube-controller-manager"];
        let pki = self.state_dir.join("pki");
        let mut cmd = Command::new(exe);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--root-ca-file={}", pki.join("ca.crt").display()))
            .arg(format!(
                "--service-account-private-key-file={}",
                pki.join("sa.key").display()
            ))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            // No serving port (nothing scrapes it here) and a single instance.
            .args(["--secure-port=0", "--leader-elect=false"])
            .args(["--use-service-account-credentials=false", "--v=2"]);
        self.spawn("kube-controller-manager", exe, cmd)?;
        let log = self.state_dir.join("kube-controller-manager.log");
        self.wait_healthy("kube-controller-manager", || {
            std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("garbagecollector") && l.contains("deployment"))
        })
    }

    /// The real kubectl (same version as the API server), with an admin kubeconfig.
    pub fn kubectl(&self) -> Kubectl {
        Kubectl::new(&self.kubectl, &self.kubeconfig)
    }

    /// Path of an admin kubeconfig for this control plane.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Where state, logs and pid files live.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Stops every process (the last started first; a node's pods before its containerd)
    /// and removes the state directory.
    pub fn stop(&mut self) {
        self.processes.clear();
        stop_state_dir(&self.state_dir);
    }

    /// Stops the process started as `name` (to see what happens without it); a no-op when
    /// there is none.
    pub fn stop_process(&mut self, name: &str) -> Result<(), Error> {
        if let Some(i) = self.processes.iter().position(|p| p.name == name) {
            let p = self.processes.remove(i);
            process::terminate(p.pid, Some(&p.exe), STOP_GRACE);
        }
        self.write_pids()
    }

    /// Takes the PIDs that changed behind this handle's back from the pids file (a node's
    /// containerd restarted by its restart script records its new PID there), so a later
    /// rewrite of the file does not bring back a stale one.
    pub fn reload_pids(&mut self) {
        let Ok(text) = std::fs::read_to_string(self.state_dir.join("pids")) else {
            return;
        };
        for l in text.lines() {
            let mut f = l.splitn(3, ' ');
            let (Some(name), Some(Ok(pid)), Some(exe)) =
                (f.next(), f.next().map(str::parse::<u32>), f.next())
            else {
                continue;
            };
            if let Some(p) = self.processes.iter_mut().find(|p| p.name == name) {
                p.pid = pid;
                p.exe = PathBuf::from(exe);
            }
        }
    }

    pub(crate) fn spawn(&mut self, name: &str, exe: &Path, cmd: Command) -> Result<(), Error> {
        let log = self.state_dir.join(format!("{name}.log"));
        let pid = process::spawn(cmd, &log, self.lifetime)
            .map_err(io_err(format!("starting {}", exe.display())))?;
        self.processes.push(Managed {
            name: name.to_owned(),
            pid,
            exe: exe.to_owned(),
        });
        self.write_pids()
    }

    /// Records `name pid exe` lines so `stop_state_dir` can stop a control plane started by
    /// another process (`wa8s-cluster down`, or a sweep after a crashed test run).
    fn write_pids(&self) -> Result<(), Error> {
        let text: String = self
            .processes
            .iter()
            .map(|p| format!("{} {} {}\n", p.name, p.pid, p.exe.display()))
            .collect();
        std::fs::write(self.state_dir.join("pids"), text).map_err(io_err("writing pids"))
    }

    pub(crate) fn wait_healthy(
        &self,
        component: &'static str,
        mut healthy: impl FnMut() -> bool,
    ) -> Result<(), Error> {
        let me = self.processes.iter().find(|p| p.name == component);
        let ok = eventually(START_TIMEOUT, Duration::from_millis(250), || {
            if healthy() {
                return Some(true);
            }
            // A process that died will not become healthy: report at once.
            me.filter(|p| !process::is_running(p.pid, None))
                .map(|_| false)
        });
        let outcome = match ok {
            Some(true) => return Ok(()),
            Some(false) => "exited during startup".to_owned(),
            None => format!("was not healthy within {START_TIMEOUT:?}"),
        };
        let log = self.state_dir.join(format!("{component}.log"));
        Err(Error::NotHealthy {
            component,
            outcome,
            log: log.display().to_string(),
            tail: tail(&log, 30),
        })
    }

    fn write_kubeconfig(&self, pki: &Pki) -> Result<(), Error> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: wa8s\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: wa8s-admin\n  user:\n    client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: wa8s\n  context:\n    cluster: wa8s\n    user: wa8s-admin\ncurrent-context: wa8s\n",
            server = self.server,
            ca = pki.ca_cert.display(),
            cert = pki.admin_cert.display(),
            key = pki.admin_key.display(),
        );
        std::fs::write(&self.kubeconfig, text).map_err(io_err("writing kubeconfig"))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.lifetime == Lifetime::Attached {
            self.stop();
        }
    }
}

pub(crate) fn free_ports<const N: usize>() -> Result<[u16; N], Error> {
    // Hold every listener until all ports are chosen so the kernel cannot hand one out twice.
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(io_err("choosing free ports"))?;
    let mut ports = [0u16; N];
    for (slot, l) in ports.iter_mut().zip(&listeners) {
        *slot = l
            .local_addr()
            .map_err(io_err("choosing free ports"))?
            .port();
    }
    Ok(ports)
}

fn etcd_healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

fn apiserver_ready(kubectl: &Kubectl) -> bool {
    kubectl
        .ok(&["get", "--raw=/readyz"])
        .map(|body| body.trim() == "ok")
        .unwrap_or(false)
}

/// The last `lines` lines of the file at `path` (empty if it cannot be read), for errors.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
