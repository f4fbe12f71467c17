//! The local cluster's one node: containerd 2.2 with the CRI plugin (runc for ordinary pods,
//! the wa8s shim for the `wa8s` runtime handler), a CNI bridge from Debian's plugins, the
//! kubelet and kube-scheduler — all started by [`ControlPlane::start_node`] and stopped with
//! the control plane.
//!
//! Everything the node makes outside its state directory is named after its network index
//! (`wa8s<N>` bridge, `/wa8s-node-<N>` cgroup root, `wa8s-<N>` CNI network), so teardown
//! removes exactly that: pods first (CNI DEL cleans their iptables rules and netns), then
//! processes by PID, leftover shims by their containerd address, mounts, cgroups, the bridge.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::containerd::{
    cri_config, ctr_cmd, import_pause_image, write_cni_config, write_registry_hosts,
};
use crate::control_plane::ControlPlane;
use crate::error::{Error, io_err};
use crate::paths::{cgroup_root, node_dir, pod_subnet};
use crate::pki::NODE_NAME;
use crate::{binaries, registry};

pub use crate::containerd::PAUSE_IMAGE;
pub use crate::paths::{containerd_config_file, containerd_socket, installed_shim_dir};

/// What the node is wired to.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Directory holding `containerd-shim-wa8s-v1` (put on containerd's PATH).
    pub shim_dir: PathBuf,
    /// Which of the machine's local networks to use: 0 for the quickstart cluster, 1 for the
    /// tests', so both can run at once. Picks the bridge, the pod subnet and the cgroup root.
    pub network: u8,
    /// Plain-HTTP registries on loopback (`127.0.0.1:5000`) containerd and the shim may use.
    pub insecure_registries: Vec<String>,
    /// `registry host → mirror host`, for containerd (hosts.toml) and the shim alike: the
    /// air-gapped setup that maps `ghcr.io` to the local registry.
    pub mirrors: Vec<(String, String)>,
    /// The cluster DNS server pods resolve through (the kubelet's `clusterDNS`); `None`:
    /// pods use the node's resolv.conf.
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// Whether containerd's configuration has the wa8s runtime from the start; `false`: the
    /// node is as a fresh cluster's, for the node installer to prepare.
    pub wa8s_runtime: bool,
    /// Run kube-proxy (nftables mode), so ClusterIP Services route from the node to ready
    /// pods as on any cluster. Its rules live in one nftables table, `ip kube-proxy`, which
    /// is machine-wide: at most one node with kube-proxy may run on a machine at a time.
    pub kube_proxy: bool,
    /// Run metrics-server behind the `metrics.k8s.io` API, so `kubectl top` works.
    pub metrics_server: bool,
}

impl NodeOptions {
    /// The bridge's own address, the pods' gateway (`10.24<N>.0.1`): how pods reach
    /// servers on the node.
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        crate::paths::gateway(self.network)
    }

    /// The pod subnet (`10.24<N>.0.0/24`).
    pub fn pod_subnet(&self) -> String {
        pod_subnet(self.network)
    }
}

/// The chart values (`key=value`, for `helm --set`) that install wa8s on the local node in
/// `state_dir`: there is no kube-proxy, so pods reach the API on the node's loopback and the
/// operator shares the node's network (its HTTP port `operator_http_port`); `registry` is
/// the `ghcr.io` mirror; the installer edits this node's containerd configuration, keeps its
/// record in the state directory (nothing outside it changes) and restarts containerd with
/// [`restart_script`], as a node without systemd would.
pub fn chart_values(
    state_dir: &Path,
    api_port: u16,
    registry: &str,
    operator_http_port: u16,
) -> Vec<String> {
    let dir = node_dir(state_dir);
    vec![
        "kubernetesApi.host=127.0.0.1".to_owned(),
        format!("kubernetesApi.port={api_port}"),
        "operator.hostNetwork=true".to_owned(),
        format!("operator.httpPort={operator_http_port}"),
        format!("operator.mirrors.ghcr\\.io={registry}"),
        format!("operator.insecureRegistries[0]={registry}"),
        format!("operator.privateRegistries[0]={registry}"),
        format!(
            "installer.containerdConfig={}",
            containerd_config_file(state_dir).display()
        ),
        format!(
            "installer.containerdSocket={}",
            containerd_socket(state_dir).display()
        ),
        format!(
            "installer.shimDir={}",
            installed_shim_dir(state_dir).display()
        ),
        format!(
            "installer.stateFile={}",
            dir.join("wa8s-node-installer.json").display()
        ),
        "installer.restart.method=command".to_owned(),
        format!(
            "installer.restart.command=/bin/sh {}",
            restart_script(state_dir).display()
        ),
    ]
}

impl ControlPlane {
    /// Starts containerd, the kubelet and kube-scheduler, registers node `wa8s-node`, and
    /// waits until it is `Ready`. Ordinary pods run with runc; pods with runtime class
    /// handler `wa8s` run in the shim found in `options.shim_dir`.
    pub fn start_node(&mut self, options: &NodeOptions) -> Result<(), Error> {
        let mut wanted = vec![
            "containerd",
            "containerd-shim-runc-v2",
            "ctr",
            "crictl",
            "kubelet",
            "kube-scheduler",
        ];
        if options.kube_proxy {
            wanted.push("kube-proxy");
        }
        if options.metrics_server {
            wanted.push("metrics-server");
        }
        let bins = binaries::ensure(&wanted)?;
        let dir = node_dir(self.state_dir());
        for sub in [
            "cni/net.d",
            "cni/ipam",
            "certs.d",
            "kubelet",
            "pod-logs",
            "wa8s-cache",
        ] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(io_err(format!("creating {}", dir.join(sub).display())))?;
        }
        std::fs::write(
            self.state_dir().join("node-network"),
            options.network.to_string(),
        )
        .map_err(io_err("writing node-network"))?;
        crate::netns::prepare_run_netns().map_err(io_err("preparing /run/netns"))?;
        write_cni_config(&dir, options.network)?;
        write_registry_hosts(&dir, &options.insecure_registries, &options.mirrors)?;
        write_shim_config(&dir, options)?;
        let config = containerd_config(&dir, options.wa8s_runtime);
        std::fs::write(dir.join("containerd.toml"), config)
            .map_err(io_err("writing containerd.toml"))?;

        // containerd: the wa8s shim and runc's shim on its PATH, Debian's runc after them.
        let containerd = &bins["containerd"];
        let path = std::env::join_paths(
            [
                options.shim_dir.clone(),
                parent(containerd),
                parent(&bins["containerd-shim-runc-v2"]),
            ]
            .into_iter()
            .chain(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            )),
        )
        .map_err(|e| Error::Io {
            what: "building containerd's PATH".into(),
            source: std::io::Error::other(e),
        })?;
        let mut cmd = Command::new(containerd);
        cmd.arg("--config")
            .arg(dir.join("containerd.toml"))
            .env("PATH", &path)
            .env("WA8S_SHIM_CONFIG", dir.join("shim.json"));
        self.spawn("containerd", containerd, cmd)?;
        std::fs::write(
            restart_script(self.state_dir()),
            restart_script_text(self.state_dir(), containerd, &path),
        )
        .map_err(io_err("writing restart-containerd.sh"))?;
        let ctr = bins["ctr"].clone();
        let socket = containerd_socket(self.state_dir());
        self.wait_healthy("containerd", || {
            ctr_cmd(&ctr, &socket, &["version"]).is_ok_and(|o| o.status.success())
        })?;
        import_pause_image(&dir, &ctr, &socket)?;

        let pki = self.state_dir().join("pki");
        let kubelet_kubeconfig = dir.join("kubelet.kubeconfig");
        std::fs::write(
            &kubelet_kubeconfig,
            kubeconfig(
                self.server(),
                &pki.join("ca.crt"),
                &pki.join("node.crt"),
                &pki.join("node.key"),
            ),
        )
        .map_err(io_err("writing the kubelet's kubeconfig"))?;
        let [kubelet_port, healthz_port] = crate::control_plane::free_ports()?;
        std::fs::write(
            dir.join("kubelet.yaml"),
            kubelet_config(&dir, options, &pki, kubelet_port, healthz_port),
        )
        .map_err(io_err("writing kubelet.yaml"))?;
        // The kubelet insists that its cgroup root exists in every hierarchy.
        create_cgroups(&cgroup_root(options.network))?;
        let kubelet = &bins["kubelet"];
        let mut cmd = Command::new(kubelet);
        cmd.arg(format!("--config={}", dir.join("kubelet.yaml").display()))
            .arg(format!("--kubeconfig={}", kubelet_kubeconfig.display()))
            .arg(format!("--root-dir={}", dir.join("kubelet").display()))
            .arg(format!("--cert-dir={}", dir.join("kubelet/pki").display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg("--v=1");
        self.spawn("kubelet", kubelet, cmd)?;

        let scheduler = &bins["kube-scheduler"];
        let mut cmd = Command::new(scheduler);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig().display()))
            .args(["--leader-elect=false", "--secure-port=0", "--v=1"]);
        self.spawn("kube-scheduler", scheduler, cmd)?;

        let kubectl = self.kubectl();
        self.wait_healthy("kubelet", || {
            kubectl
                .ok(&[
                    "get",
                    "node",
                    NODE_NAME,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])
                .is_ok_and(|s| s.trim() == "True")
        })?;
        if options.kube_proxy {
            self.start_kube_proxy(&bins["kube-proxy"], options)?;
        }
        if options.metrics_server {
            self.start_metrics_server(&bins["metrics-server"])?;
        }
        Ok(())
    }

    /// metrics-server as a node process behind the `v1beta1.metrics.k8s.io` APIService: it
    /// scrapes the kubelet's `/metrics/resource` (container numbers come from the CRI, so
    /// from the wa8s shim's Stats) and `kubectl top` reads it through the API server. The
    /// APIService reaches it at the node's address through a selector-less Service's
    /// EndpointSlice (the aggregator routes to endpoints itself; loopback is not allowed
    /// there).
    fn start_metrics_server(&mut self, exe: &Path) -> Result<(), Error> {
        let dir = node_dir(self.state_dir()).join("metrics-server");
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let kubectl = self.kubectl();
        let node_ip = kubectl
            .ok(&[
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
            ])
            .map_err(|e| Error::Io {
                what: "reading the node's address".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let node_ip = node_ip.trim().to_owned();
        let [port] = crate::control_plane::free_ports()?;
        let kubeconfig = self.kubeconfig().display().to_string();
        let mut cmd = Command::new(exe);
        cmd.arg(format!("--kubeconfig={kubeconfig}"))
            .arg(format!("--authentication-kubeconfig={kubeconfig}"))
            .arg(format!("--authorization-kubeconfig={kubeconfig}"))
            .arg(format!("--bind-address={node_ip}"))
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", dir.display()))
            // The kubelet's serving certificate is self-signed, without the node's IP.
            .arg("--kubelet-insecure-tls")
            .arg("--kubelet-preferred-address-types=InternalIP")
            .arg("--kubelet-use-node-status-port")
            // Its floor (0.9 of it must exceed the 10 s kubelet request timeout).
            .arg("--metric-resolution=15s")
            .arg("--v=1");
        self.spawn("metrics-server", exe, cmd)?;
        let addr = format!("{node_ip}:{port}");
        self.wait_healthy("metrics-server", || {
            std::net::TcpStream::connect(&addr).is_ok()
        })?;
        let manifest = format!(
            r#"apiVersion: v1
kind: Service
metadata:
  name: metrics-server
  namespace: kube-system
spec:
  ports:
    - name: https
      port: 443
      targetPort: {port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: metrics-server-node
  namespace: kube-system
  labels:
    kubernetes.io/service-name: metrics-server
    endpointslice.kubernetes.io/managed-by: wa8s-e2e
addressType: IPv4
ports:
  - name: https
    port: {port}
    protocol: TCP
endpoints:
  - addresses: ["{node_ip}"]
    conditions:
      ready: true
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.metrics.k8s.io
spec:
  service:
    name: metrics-server
    namespace: kube-system
    port: 443
  group: metrics.k8s.io
  version: v1beta1
  # Its certificate is self-signed for this run; the link is the node's own address.
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
"#
        );
        let applied = kubectl
            .apply("kube-system", &manifest)
            .map_err(|e| Error::Io {
                what: "registering metrics-server's APIService".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
        if !applied.success {
            return Err(Error::Io {
                what: "registering metrics-server's APIService".into(),
                source: std::io::Error::other(applied.stderr),
            });
        }
        self.wait_healthy("metrics-server", || {
            kubectl
                .ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"])
                .is_ok()
        })
    }

    /// kube-proxy in nftables mode, after the node registered (it reads its Node). It is
    /// told to leave the machine's conntrack sysctls alone; its whole state is the
    /// `ip`/`ip6 kube-proxy` tables, which teardown deletes.
    fn start_kube_proxy(&mut self, exe: &Path, options: &NodeOptions) -> Result<(), Error> {
        if let Some(pid) = processes_named("kube-proxy").first() {
            return Err(Error::Io {
                what: "starting kube-proxy".into(),
                source: std::io::Error::other(format!(
                    "kube-proxy {pid} already runs on this machine, and both would rewrite the \
                     machine's one `ip kube-proxy` nftables table; stop that cluster first"
                )),
            });
        }
        let dir = node_dir(self.state_dir());
        let [healthz_port, metrics_port] = crate::control_plane::free_ports()?;
        std::fs::write(
            dir.join("kube-proxy.yaml"),
            kube_proxy_config(
                self.kubeconfig(),
                &options.pod_subnet(),
                healthz_port,
                metrics_port,
            ),
        )
        .map_err(io_err("writing kube-proxy.yaml"))?;
        std::fs::write(
            dir.join("kube-proxy-tables"),
            "ip kube-proxy\nip6 kube-proxy\n",
        )
        .map_err(io_err("recording kube-proxy's tables"))?;
        let mut cmd = Command::new(exe);
        cmd.arg(format!(
            "--config={}",
            dir.join("kube-proxy.yaml").display()
        ))
        .arg("--v=1");
        self.spawn("kube-proxy", exe, cmd)?;
        let healthz = format!("127.0.0.1:{healthz_port}");
        // 200 once its first full sync of the rules is done.
        self.wait_healthy("kube-proxy", || {
            crate::http::get(&healthz, "/healthz", Duration::from_secs(2))
                .is_ok_and(|(status, _)| status == 200)
        })
    }
}

fn kube_proxy_config(
    kubeconfig: &Path,
    cluster_cidr: &str,
    healthz_port: u16,
    metrics_port: u16,
) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {NODE_NAME}
clusterCIDR: {cluster_cidr}
detectLocalMode: ClusterCIDR
healthzBindAddress: 127.0.0.1:{healthz_port}
metricsBindAddress: 127.0.0.1:{metrics_port}
# Nothing may lower oom_score_adj without CAP_SYS_RESOURCE.
oomScoreAdj: 0
# Zeros: keep the machine's conntrack sysctls as they are (kube-proxy never restores them).
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
        kubeconfig = kubeconfig.display(),
    )
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The node's "restart containerd" command (what `systemctl restart containerd` is on a
/// systemd node): `/bin/sh <this file>`.
pub fn restart_script(state_dir: &Path) -> PathBuf {
    node_dir(state_dir).join("restart-containerd.sh")
}

/// Stops the recorded containerd and starts the same command line again, as systemd would:
/// outside the caller's cgroups (the node installer runs it from a pod), detached, with the
/// new PID recorded in `pids` so teardown stops it.
fn restart_script_text(state_dir: &Path, containerd: &Path, path: &std::ffi::OsStr) -> String {
    let dir = node_dir(state_dir);
    format!(
        r#"#!/bin/sh
set -eu
pids='{pids}'
old=$(awk '$1 == "containerd" {{ print $2 }}' "$pids")
if [ -n "$old" ]; then
  kill -TERM "$old" 2>/dev/null || true
  # Until it has exited; a zombie has (its parent, the harness, reaps it later).
  i=0
  while [ -r "/proc/$old/stat" ] && ! awk '{{ exit ($3 == "Z") ? 0 : 1 }}' "/proc/$old/stat"; do
    i=$((i + 1))
    [ "$i" -lt 300 ] || {{ echo "containerd $old did not stop within 30s" >&2; exit 1; }}
    sleep 0.1
  done
fi
for procs in /sys/fs/cgroup/*/cgroup.procs /sys/fs/cgroup/cgroup.procs; do
  [ -w "$procs" ] && echo $$ > "$procs" 2>/dev/null || true
done
# In the node's mount namespace (the kubelet's), not the caller's: a containerd started in a
# pod's private view of the node would not see the volumes the kubelet mounts later.
kubelet=$(awk '$1 == "kubelet" {{ print $2 }}' "$pids")
nsenter --mount="/proc/$kubelet/ns/mnt" -- env PATH='{path}' WA8S_SHIM_CONFIG='{d}/shim.json' '{containerd}' --config '{d}/containerd.toml' >>'{log}' 2>&1 </dev/null &
sed -i "s|^containerd [0-9]* |containerd $! |" "$pids"
"#,
        pids = state_dir.join("pids").display(),
        path = path.to_string_lossy(),
        d = dir.display(),
        containerd = containerd.display(),
        log = state_dir.join("containerd.log").display(),
    )
}

/// Imports an OCI image tarball into the node's containerd (namespace `k8s.io`, where the
/// kubelet finds it).
pub fn import_image(state_dir: &Path, tarball: &Path) -> Result<(), Error> {
    let bins = binaries::ensure(&["ctr"])?;
    let out = ctr_cmd(
        &bins["ctr"],
        &containerd_socket(state_dir),
        &["images", "import", &tarball.to_string_lossy()],
    )
    .map_err(io_err("running ctr images import"))?;
    if !out.status.success() {
        return Err(Error::Io {
            what: format!("importing {}", tarball.display()),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        });
    }
    Ok(())
}

/// Pushes image `local` (already in the node's containerd) to `remote` on a plain-HTTP
/// registry, e.g. `127.0.0.1:5000/wa8s/operator:0.2.0`.
pub fn push_image(state_dir: &Path, local: &str, remote: &str) -> Result<(), Error> {
    let bins = binaries::ensure(&["ctr"])?;
    let out = ctr_cmd(
        &bins["ctr"],
        &containerd_socket(state_dir),
        &["images", "push", "--plain-http", remote, local],
    )
    .map_err(io_err("running ctr images push"))?;
    if !out.status.success() {
        return Err(Error::Io {
            what: format!("pushing {local} to {remote}"),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        });
    }
    Ok(())
}

fn containerd_config(dir: &Path, wa8s_runtime: bool) -> String {
    format!(
        r#"{base}[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
{runtime}{cri}"#,
        base =
            crate::containerd::base_config(&dir.join("containerd"), &dir.join("containerd.sock")),
        runtime = if wa8s_runtime {
            crate::containerd::wa8s_runtime()
        } else {
            String::new()
        },
        cri = cri_config(dir),
    )
}

/// The shim's node configuration (`WA8S_SHIM_CONFIG`): the same mirrors as containerd's.
fn write_shim_config(dir: &Path, options: &NodeOptions) -> Result<(), Error> {
    let mirrors: serde_json::Map<String, serde_json::Value> = options
        .mirrors
        .iter()
        .map(|(f, t)| (f.clone(), serde_json::Value::String(t.clone())))
        .collect();
    let config = serde_json::json!({
        "cacheDir": dir.join("wa8s-cache"),
        "mirrors": mirrors,
        "insecureRegistries": options.insecure_registries,
        // The test registries are on loopback; the fallback pull may reach them.
        "privateRegistries": options.insecure_registries,
    });
    std::fs::write(
        dir.join("shim.json"),
        serde_json::to_vec_pretty(&config).unwrap_or_default(),
    )
    .map_err(io_err("writing shim.json"))
}

fn kubelet_config(
    dir: &Path,
    options: &NodeOptions,
    pki: &Path,
    port: u16,
    healthz_port: u16,
) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 and no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
containerRuntimeEndpoint: unix://{d}/containerd.sock
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: {ca}
authorization:
  mode: AlwaysAllow
clusterDomain: cluster.local
failSwapOn: false
protectKernelDefaults: false
# Nothing may lower oom_score_adj without CAP_SYS_RESOURCE.
oomScoreAdj: 0
podLogsDir: {d}/pod-logs
serializeImagePulls: false
# The node shares a developer's disk with cargo's target directory, which a build can fill
# to within a few GiB: percentages of a large disk would evict the pods under test (a CI run
# failed that way), so evict only when it is really full.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 512Mi
  nodefs.inodesFree: 1%
  imagefs.available: 512Mi
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
{dns}"#,
        cgroup_root = cgroup_root(options.network),
        dns = options
            .cluster_dns
            .map(|ip| format!("clusterDNS: [\"{ip}\"]\n"))
            .unwrap_or_default(),
        d = dir.display(),
        ca = pki.join("ca.crt").display(),
    )
}

fn kubeconfig(server: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: wa8s\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: node\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: node\n  context:\n    cluster: wa8s\n    user: node\ncurrent-context: node\n",
        ca.display(),
        cert.display(),
        key.display()
    )
}

/// Processes whose executable's file name is `name`.
fn processes_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == name))
        })
        .collect()
}

fn create_cgroups(root: &str) -> Result<(), Error> {
    let hierarchies =
        std::fs::read_dir("/sys/fs/cgroup").map_err(io_err("listing /sys/fs/cgroup"))?;
    for h in hierarchies.flatten() {
        if h.path().join("cgroup.procs").exists() {
            let dir = h.path().join(root);
            std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
    }
    Ok(())
}

impl ControlPlane {
    /// Starts an anonymous plain-HTTP distribution registry on `addr` (e.g. `127.0.0.1:5000`)
    /// with its storage in the state directory, stopped with the rest of the cluster.
    pub fn start_registry(&mut self, addr: &str) -> Result<(), Error> {
        let dir = self.state_dir().join("registry");
        std::fs::create_dir_all(dir.join("storage"))
            .map_err(io_err(format!("creating {}", dir.display())))?;
        std::fs::write(dir.join("config.yml"), registry::config(&dir, addr, ""))
            .map_err(io_err("writing the registry's config.yml"))?;
        let exe = registry::which("docker-registry").ok_or_else(|| Error::Io {
            what: "finding docker-registry on PATH".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        let mut cmd = Command::new(&exe);
        cmd.arg("serve").arg(dir.join("config.yml"));
        self.spawn("registry", &exe, cmd)?;
        let url = addr.to_owned();
        self.wait_healthy("registry", || std::net::TcpStream::connect(&url).is_ok())
    }
}
