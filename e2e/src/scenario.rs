//! The whole single-node cluster end-to-end scenarios run on, shared by the tests of one
//! process: control plane, kube-controller-manager, kube-scheduler, a registry that the node
//! and the operator use as the mirror of `ghcr.io` (the air-gapped setup), a node (network 1,
//! so it can run beside the quickstart's) whose pods resolve names through a test DNS server,
//! and the wa8s operator binary. Everything is stopped by PID when the process exits.
//!
//! The wa8s binaries are the ones built beside the test (`target/<profile>/`): build them
//! first (`cargo build -p wa8s-shim -p wa8s-operator -p wa8s-cli`; the test script does).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::cleanup::{stop_at_exit, sweep_stale};
use crate::control_plane::{ControlPlane, free_ports};
use crate::dns::DnsServer;
use crate::kubectl::Kubectl;
use crate::netns::Netns;
use crate::node::NodeOptions;
use crate::paths::{cache_dir, repo_root};
use crate::process::Lifetime;

/// The node network the scenarios use (the quickstart's is 0).
const NETWORK: u8 = 1;

/// A running cluster with the operator.
#[derive(Debug)]
pub struct Cluster {
    cp: ControlPlane,
    registry: String,
    node: NodeOptions,
    dns: DnsServer,
    bin_dir: PathBuf,
    /// Where the operator serves /metrics as pods see it: the node's gateway address, which
    /// a Service's endpoints can name (they may not be loopback).
    operator_http: Option<std::net::SocketAddr>,
    /// Receives the operator's reconcile spans.
    operator_spans: Option<crate::otel::Collector>,
}

impl Cluster {
    /// The cluster every test of this process shares, started on first use.
    pub fn shared() -> Result<&'static Cluster, String> {
        static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Cluster::start(false).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A cluster as users have it before installing wa8s: no CRD, no RuntimeClass, no
    /// operator, and a node whose containerd knows nothing of the wa8s runtime (its shim
    /// directory on containerd's PATH is empty). Restarting its containerd is
    /// [`crate::node::restart_script`]. Stopped by PID when dropped or the process exits.
    pub fn fresh() -> anyhow::Result<Cluster> {
        Cluster::start(true)
    }

    fn start(fresh: bool) -> anyhow::Result<Cluster> {
        let bin_dir = bin_dir()?;
        let run = cache_dir().join("run");
        sweep_stale(&run);
        let dir = run.join(format!("test-{}-node", std::process::id()));
        let mut cp = ControlPlane::start(&dir, Lifetime::Attached)?;
        stop_at_exit(cp.state_dir());
        cp.start_controller_manager()?;
        let [port] = free_ports::<1>()?;
        let registry = format!("127.0.0.1:{port}");
        cp.start_registry(&registry)?;
        let mut node = NodeOptions {
            shim_dir: if fresh {
                crate::node::installed_shim_dir(&dir)
            } else {
                bin_dir.clone()
            },
            network: NETWORK,
            insecure_registries: vec![registry.clone()],
            mirrors: vec![("ghcr.io".to_owned(), registry.clone())],
            cluster_dns: None,
            wa8s_runtime: !fresh,
            // Services route as on any cluster (rollouts under load go through one).
            kube_proxy: true,
            metrics_server: true,
        };
        node.cluster_dns = Some(node.gateway());
        let dns = DnsServer::start(SocketAddr::from((node.gateway(), 53)))?;
        cp.start_node(&node)?;
        if fresh {
            return Ok(Cluster {
                cp,
                registry,
                node,
                dns,
                bin_dir,
                operator_http: None,
                operator_spans: None,
            });
        }

        let kubectl = cp.kubectl();
        kubectl.install_crd()?;
        kubectl.ok(&[
            "apply",
            "--server-side",
            "-f",
            &repo_root()
                .join("e2e/manifests/runtimeclass.yaml")
                .to_string_lossy(),
        ])?;

        let mut cluster = Cluster {
            cp,
            registry,
            node,
            dns,
            bin_dir,
            operator_http: None,
            operator_spans: None,
        };
        cluster.start_operator()?;
        Ok(cluster)
    }

    /// A cluster like [`Cluster::shared`] that belongs to the caller, who may stop and restart
    /// its parts ([`Cluster::stop_registry`], [`Cluster::restart_containerd`], ...). Stopped
    /// by PID when dropped or the process exits. Uses the same node network as the shared
    /// one: at most one of them per test process.
    pub fn own() -> anyhow::Result<Cluster> {
        Cluster::start(false)
    }

    /// Starts the operator as users run it outside a cluster: the admin kubeconfig, the
    /// mirror, and a short resolve interval so a moved tag shows within a test's patience.
    /// Returns once it reports ready.
    pub fn start_operator(&mut self) -> anyhow::Result<()> {
        let [http_port] = free_ports::<1>()?;
        let exe = self.bin_dir.join("wa8s-operator");
        if self.operator_spans.is_none() {
            self.operator_spans = Some(crate::otel::Collector::start()?);
        }
        let mut cmd = Command::new(&exe);
        if let Some(c) = &self.operator_spans {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", c.endpoint())
                .env("OTEL_BSP_SCHEDULE_DELAY", "200");
        }
        cmd.env("KUBECONFIG", self.cp.kubeconfig())
            .env("RUST_LOG", "info")
            .arg(format!("--mirror=ghcr.io={}", self.registry))
            .arg(format!("--insecure-registry={}", self.registry))
            .arg(format!("--private-registry={}", self.registry))
            .arg("--leader-elect=false")
            .arg("--resolve-interval=10s")
            // Every address: the node's gateway (which a Service's endpoints can name; it
            // may not exist yet) as well as loopback.
            .arg(format!("--http-addr=0.0.0.0:{http_port}"));
        self.cp.spawn("wa8s-operator", &exe, cmd)?;
        let ready = format!("127.0.0.1:{http_port}");
        self.operator_http = Some(std::net::SocketAddr::from((self.node.gateway(), http_port)));
        self.cp.wait_healthy("wa8s-operator", || {
            crate::http::get(&ready, "/readyz", Duration::from_secs(2))
                .is_ok_and(|(status, _)| status == 200)
        })?;
        Ok(())
    }

    /// Stops the operator (SIGTERM, then SIGKILL after a grace period).
    pub fn stop_operator(&mut self) -> anyhow::Result<()> {
        Ok(self.cp.stop_process("wa8s-operator")?)
    }

    /// Stops the registry: pulls and tag resolution get "connection refused".
    pub fn stop_registry(&mut self) -> anyhow::Result<()> {
        Ok(self.cp.stop_process("registry")?)
    }

    /// Starts the registry again on the same address with the same storage.
    pub fn start_registry(&mut self) -> anyhow::Result<()> {
        let addr = self.registry.clone();
        Ok(self.cp.start_registry(&addr)?)
    }

    /// Restarts the node's containerd the way the node installer does (its restart script),
    /// while the kubelet and the pods' shims keep running; returns once the new containerd
    /// answers on its socket.
    pub fn restart_containerd(&mut self) -> anyhow::Result<()> {
        let script = crate::node::restart_script(self.state_dir());
        let out = crate::process::run_with_timeout(
            {
                let mut c = Command::new("/bin/sh");
                c.arg(&script);
                c
            },
            Duration::from_secs(120),
        )?;
        self.cp.reload_pids();
        anyhow::ensure!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let socket = crate::node::containerd_socket(self.state_dir());
        crate::process::eventually(Duration::from_secs(60), Duration::from_millis(100), || {
            std::os::unix::net::UnixStream::connect(&socket).ok()
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "containerd did not answer on {} after its restart",
                socket.display()
            )
        })?;
        Ok(())
    }

    /// Applies `manifest` in `ns` and waits (see [`Cluster::wait_ready`]) until WebAssembly
    /// `name` is Ready.
    pub fn apply_ready(
        &self,
        ns: &str,
        name: &str,
        manifest: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let applied = self.kubectl().apply(ns, manifest)?;
        anyhow::ensure!(applied.success, "{name} refused: {}", applied.stderr);
        self.wait_ready(ns, name, timeout)
    }

    /// Waits up to `timeout` for WebAssembly `ns/name` to be `Ready`. On failure the error
    /// carries what a person would look at: the objects, the conditions, the namespace's
    /// events and the operator's log.
    pub fn wait_ready(&self, ns: &str, name: &str, timeout: Duration) -> anyhow::Result<()> {
        let k = self.kubectl();
        let started = std::time::Instant::now();
        let out = k.run(&[
            "wait",
            "-n",
            ns,
            "--for=condition=Ready",
            &format!("--timeout={}s", timeout.as_secs()),
            &format!("webassembly/{name}"),
        ])?;
        if out.success {
            // In the log, so a slow machine shows before it fails.
            eprintln!("{ns}/{name} Ready after {:.1?}", started.elapsed());
            return Ok(());
        }
        let get = |args: &[&str]| k.run(args).map(|o| o.stdout).unwrap_or_default();
        let state = get(&["get", "webassembly,deploy,pods", "-n", ns, "-o", "wide"]);
        let conditions = get(&[
            "get",
            &format!("webassembly/{name}"),
            "-n",
            ns,
            "-o",
            "jsonpath={.status.conditions}",
        ]);
        let events = get(&["get", "events", "-n", ns, "--sort-by=.lastTimestamp"]);
        let operator = crate::control_plane::tail(&self.state_dir().join("wa8s-operator.log"), 20);
        anyhow::bail!(
            "{name} not Ready after {:.0?}: {}\n{state}\n{conditions}\nevents:\n{events}\noperator log:\n{operator}",
            started.elapsed(),
            out.stderr
        )
    }

    /// The real kubectl with an admin kubeconfig.
    /// The collector the operator exports its spans to.
    pub fn operator_spans(&self) -> Option<&crate::otel::Collector> {
        self.operator_spans.as_ref()
    }

    /// Where the operator serves /metrics, /healthz and /readyz.
    pub fn operator_http(&self) -> Option<std::net::SocketAddr> {
        self.operator_http
    }

    pub fn kubectl(&self) -> Kubectl {
        self.cp.kubectl()
    }

    /// The registry (`127.0.0.1:port`) that stands in for `ghcr.io`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The node's wiring (its gateway is the node's address on the pod network).
    pub fn node(&self) -> &NodeOptions {
        &self.node
    }

    /// The DNS server the pods resolve through.
    pub fn dns(&self) -> &DnsServer {
        &self.dns
    }

    /// The API server's port on 127.0.0.1.
    pub fn api_port(&self) -> anyhow::Result<u16> {
        let server = self.cp.server();
        server
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no port in the API server URL {server}"))
    }

    /// An admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        self.cp.kubeconfig()
    }

    /// The control plane's state directory (logs of every process).
    pub fn state_dir(&self) -> &Path {
        self.cp.state_dir()
    }

    /// The network namespace (a path under /var/run/netns) of the first ready pod in
    /// Kubernetes namespace `namespace`, from the node's CRI: where a wa8s pod's guest makes
    /// its connections, so `127.0.0.1` inside it is the loopback a guest would reach.
    pub fn pod_netns(&self, namespace: &str) -> anyhow::Result<PathBuf> {
        let crictl = crate::binaries::ensure(&["crictl"])?["crictl"].clone();
        let endpoint = format!(
            "unix://{}",
            crate::paths::containerd_socket(self.state_dir()).display()
        );
        let run = |args: &[&str]| -> anyhow::Result<String> {
            let mut cmd = Command::new(&crictl);
            cmd.args(["--runtime-endpoint", &endpoint, "--timeout", "30s"])
                .args(args);
            let out = crate::process::run_with_timeout(cmd, Duration::from_secs(60))?;
            anyhow::ensure!(
                out.status.success(),
                "crictl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let pods = run(&["pods", "--namespace", namespace, "--state", "ready", "-q"])?;
        let id = pods
            .split_whitespace()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no ready pod in namespace {namespace}"))?;
        let info: serde_json::Value = serde_json::from_str(&run(&["inspectp", id])?)?;
        crate::netns::of_sandbox(&info)
            .ok_or_else(|| anyhow::anyhow!("no network namespace for pod {id}: {info}"))
    }

    /// Pushes `wasm` with the `wa8s` CLI as `<registry>/<repository>:<tag>`, i.e. as
    /// `ghcr.io/<repository>:<tag>` for the cluster. Returns the manifest digest.
    pub fn push(&self, wasm: &[u8], repository_tag: &str) -> anyhow::Result<String> {
        crate::registry::push_with_cli(
            &self.bin_dir.join("wa8s"),
            wasm,
            &format!("{}/{repository_tag}", self.registry),
        )
    }
}

/// `target/<profile>/`, where the wa8s binaries are built beside the tests.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test binary>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(PathBuf::from)
        .unwrap_or_default();
    for bin in ["containerd-shim-wa8s-v1", "wa8s-operator", "wa8s"] {
        anyhow::ensure!(
            dir.join(bin).is_file(),
            "no {bin} in {}: build the wa8s binaries first (cargo build -p wa8s-shim -p wa8s-operator -p wa8s-cli)",
            dir.display()
        );
    }
    Ok(dir)
}

/// A minimal HTTP server answering every request with 200 and a fixed body; stopped on drop.
#[derive(Debug)]
pub struct HttpResponder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    /// The network namespace its listener is in, when not the test's own.
    netns: Option<PathBuf>,
}

impl HttpResponder {
    /// Serves on `listener` from a thread.
    pub fn spawn(listener: TcpListener, body: &str) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (stop.clone(), accepted.clone());
        let body = body.to_owned();
        std::thread::spawn(move || serve(&listener, &body, &flag, &count));
        Ok(HttpResponder {
            addr,
            stop,
            accepted,
            netns: None,
        })
    }

    /// Serves on `addr` inside the network namespace at `netns` (a pod's: its loopback).
    pub fn spawn_in(netns: &Path, addr: SocketAddr, body: &str) -> anyhow::Result<Self> {
        let mut me = Self::spawn(listen_in(netns, addr)?, body)?;
        me.netns = Some(netns.to_owned());
        Ok(me)
    }

    /// How many connections it has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocked accept so the thread sees the flag and ends. (If the listener
        // lives in a namespace that is already gone, the thread ends with the process.)
        let wake = if self.addr.ip().is_unspecified() {
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.addr.port()))
        } else {
            self.addr
        };
        let wake = || TcpStream::connect_timeout(&wake, Duration::from_millis(200));
        let _ = match &self.netns {
            Some(netns) => crate::netns::within(netns, wake),
            None => wake(),
        };
    }
}

fn serve(listener: &TcpListener, body: &str, stop: &AtomicBool, accepted: &AtomicUsize) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut s) = conn else { continue };
        accepted.fetch_add(1, Ordering::SeqCst);
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

/// A server that is not the node: its own network namespace, joined to the node's pod bridge
/// by a veth pair with address `ip`, answering HTTP on `ip:port`. Removed on drop.
#[derive(Debug)]
pub struct Upstream {
    _responder: HttpResponder,
    _netns: Netns,
    addr: SocketAddr,
}

impl Upstream {
    /// Name of the namespace on network `n`; teardown of a node removes a leftover one (and
    /// those of upstreams started with a label).
    pub fn netns_name(network: u8) -> String {
        crate::paths::upstream_netns(network)
    }

    /// Starts it on `node`'s bridge, which exists once a pod has run on the node.
    pub fn start(node: &NodeOptions, ip: Ipv4Addr, port: u16, body: &str) -> anyhow::Result<Self> {
        Self::start_labelled(node, "", ip, port, body)
    }

    /// [`Upstream::start`] for one of several upstreams on a node at once (tests running in
    /// parallel): `label` (up to 6 letters) tells their namespaces and veths apart.
    pub fn start_labelled(
        node: &NodeOptions,
        label: &str,
        ip: Ipv4Addr,
        port: u16,
        body: &str,
    ) -> anyhow::Result<Self> {
        Self::on_network(node.network, label, ip, port, body)
    }

    /// [`Upstream::start_labelled`] on the bridge of CNI network `network` (a node's, or a
    /// CRI test's containerd's), which exists once a pod has run on it.
    pub fn on_network(
        network: u8,
        label: &str,
        ip: Ipv4Addr,
        port: u16,
        body: &str,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            label.len() <= 6 && label.chars().all(|c| c.is_ascii_alphabetic()),
            "upstream label {label:?}: up to 6 letters"
        );
        let name = format!("{}{label}", Self::netns_name(network));
        let netns = Netns::new(&name)?;
        let (outside, inside) = (format!("wa8s-up{network}{label}"), "eth0");
        let ip_cmd = crate::netns::ip;
        let _ = Command::new("ip")
            .args(["link", "del", &outside])
            .stderr(std::process::Stdio::null())
            .status();
        ip_cmd(&[
            "link", "add", &outside, "type", "veth", "peer", "name", inside, "netns", &name,
        ])?;
        ip_cmd(&[
            "link",
            "set",
            &outside,
            "master",
            &crate::paths::bridge(network),
            "up",
        ])?;
        ip_cmd(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            inside,
        ])?;
        ip_cmd(&["-n", &name, "link", "set", inside, "up"])?;
        ip_cmd(&[
            "-n",
            &name,
            "route",
            "add",
            "default",
            "via",
            &crate::paths::gateway(network).to_string(),
        ])?;
        let listener = listen_in(&netns.path(), SocketAddr::from((ip, port)))?;
        Ok(Upstream {
            _responder: HttpResponder::spawn(listener, body)?,
            _netns: netns,
            addr: SocketAddr::from((ip, port)),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A listener on `addr` inside the network namespace at `netns`.
fn listen_in(netns: &Path, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    Ok(crate::netns::within(netns, || TcpListener::bind(addr))?)
}

/// A `WebAssembly` object `name` running `ghcr.io/<repository>:<tag>` (through the mirror):
/// `replicas` pods with 32Mi each.
pub fn manifest(name: &str, repository: &str, tag: &str, replicas: u32) -> String {
    format!(
        "apiVersion: wa8s.reconciler.io/v1\nkind: WebAssembly\nmetadata:\n  name: {name}\nspec:\n  module:\n    registry: ghcr.io/{repository}\n    tag: {tag}\n  replicas: {replicas}\n  resources:\n    memory: 32Mi\n"
    )
}

/// `component` with a custom section naming `tag`: the same behaviour, a new digest (a new
/// release of the same code).
pub fn variant(component: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                return;
            }
        }
    }
    let name = b"wa8s-e2e";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut wasm = component.to_vec();
    wasm.push(0); // custom section
    leb(payload.len(), &mut wasm);
    wasm.extend_from_slice(&payload);
    wasm
}

/// The pause between a load's requests: ~20 requests/s (a rate, not a wait for something
/// to happen).
const LOAD_PACE: Duration = Duration::from_millis(50);

/// A modest steady load: GETs `addr` every [`LOAD_PACE`] on a thread (each on a new
/// connection, with a 5 s deadline) until [`Load::finish`], which returns (requests,
/// failures, each with the seconds since the start).
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<std::sync::atomic::AtomicU32>,
    thread: Option<std::thread::JoinHandle<(u32, Vec<String>)>>,
}

impl Load {
    pub fn start(addr: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (flag, ok) = (stop.clone(), answered.clone());
        let thread = std::thread::spawn(move || {
            let mut sent = 0u32;
            let mut failures = Vec::new();
            let started = std::time::Instant::now();
            while !flag.load(Ordering::Relaxed) {
                sent += 1;
                // When, so a failure can be matched with the cluster's events.
                let at = started.elapsed().as_secs_f64();
                match crate::http::get(&addr, "/", Duration::from_secs(5)) {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((status, body)) => failures.push(format!("at {at:.2} s: {status} {body}")),
                    Err(e) => failures.push(format!("at {at:.2} s: {e}")),
                }
                std::thread::sleep(LOAD_PACE);
            }
            (sent, failures)
        });
        Load {
            stop,
            answered,
            thread: Some(thread),
        }
    }

    /// Requests answered with 200 so far.
    pub fn answered(&self) -> u32 {
        self.answered.load(Ordering::Relaxed)
    }

    pub fn finish(mut self) -> (u32, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap_or((0, vec!["load thread panicked".into()])))
            .unwrap_or_default()
    }
}

/// A test that returns early still stops its load (the thread ends after its request).
impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
