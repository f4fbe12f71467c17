//! `wa8s-node-installer`: flags → [`Options`], then install / uninstall on this node, and in
//! the DaemonSet the node label and the wait for uninstall. The node work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Args as ClapArgs, Parser, Subcommand};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use wa8s_api::contract::{NODE_LABEL, NODE_LABEL_READY, parse_duration_ms};
use wa8s_installer::node::{self, Options, Outcome, Restart, SHIM_NAME};
use wa8s_installer::slots::Slots;

/// The DaemonSet annotation that asks every installer pod to restore its node (set by the
/// chart's pre-delete hook, `uninstall-all`).
const UNINSTALL_ANNOTATION: &str = "wa8s.reconciler.io/uninstall";

#[derive(Parser, Debug)]
#[command(
    name = "wa8s-node-installer",
    version,
    about = "Puts the wa8s shim on a node and the wa8s runtime into containerd's configuration"
)]
struct Cli {
    /// Log lines as `text` or `json` (levels: WA8S_LOG, in RUST_LOG syntax).
    #[arg(long, global = true, default_value = "text", env = "WA8S_LOG_FORMAT")]
    log_format: wa8s_telemetry::LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Prepare this node. Without --once (the DaemonSet), then label the node, and wait:
    /// restore the node when the chart is uninstalled, exit on SIGTERM.
    Install {
        #[command(flatten)]
        node: NodeArgs,
        /// Install, label and exit.
        #[arg(long)]
        once: bool,
        /// Nodes of this DaemonSet that change (and restart containerd) at once; each
        /// takes one of this many Leases in the pod's namespace first. Unset: no limit.
        #[arg(long, env = "WA8S_MAX_UNAVAILABLE", value_parser = clap::value_parser!(u32).range(1..))]
        max_unavailable: Option<u32>,
    },
    /// Restore this node from the installer's record and take the node label off.
    Uninstall {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// (The DaemonSet's readiness probe.) Succeed when this node is prepared: installed,
    /// and containerd restarted since.
    Ready {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// (The chart's pre-delete hook.) Ask every installer pod of DaemonSet NAME to restore
    /// its node, and wait until no node carries the wa8s label.
    UninstallAll {
        #[arg(long, env = "DAEMONSET_NAME")]
        daemonset: String,
        #[arg(long, env = "POD_NAMESPACE")]
        namespace: String,
        /// How long to wait for the nodes, e.g. 5m.
        #[arg(long, default_value = "5m")]
        timeout: String,
    },
}

#[derive(ClapArgs, Debug)]
struct NodeArgs {
    /// The node's `/` as mounted in this container.
    #[arg(long, env = "WA8S_HOST_ROOT", default_value = "/")]
    root: PathBuf,
    /// containerd's configuration (node path). Default: found by distribution — k3s's or
    /// RKE2's template, MicroK8s's containerd-template.toml, k0s's containerd.toml, else
    /// /etc/containerd/config.toml (through a drop-in directory when the file imports one).
    #[arg(long, env = "WA8S_CONTAINERD_CONFIG")]
    config: Option<PathBuf>,
    /// Config version for a config.toml the installer has to create (2 or 3).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i64).range(2..=3))]
    new_config_version: i64,
    /// The shim binary to install. Default: next to this binary.
    #[arg(long, env = "WA8S_SHIM")]
    shim: Option<PathBuf>,
    /// Node directory for the shim. Outside /usr/local/bin (on containerd's PATH), the
    /// runtime names the shim by its absolute path (nodes whose /usr/local/bin is read-only).
    #[arg(long, env = "WA8S_SHIM_DIR", default_value = node::DEFAULT_SHIM_DIR)]
    shim_dir: PathBuf,
    /// auto (the distribution's systemd unit: containerd, k3s, rke2, MicroK8s's containerd;
    /// on k0s, k0s's own restart), systemd, command or none.
    #[arg(long, env = "WA8S_RESTART", default_value = "auto")]
    restart: String,
    /// The systemd unit for --restart systemd.
    #[arg(long, env = "WA8S_RESTART_UNIT", default_value = "containerd")]
    restart_unit: String,
    /// Shell command run in the node's root for --restart command.
    #[arg(long, env = "WA8S_RESTART_COMMAND")]
    restart_command: Option<String>,
    /// containerd's socket (node path). Default: the distribution's.
    #[arg(long, env = "WA8S_CONTAINERD_SOCKET")]
    socket: Option<PathBuf>,
    /// How long containerd may take to come back after a restart, e.g. 2m.
    #[arg(long, default_value = "2m")]
    restart_timeout: String,
    /// Where the installer records what it changed (node path).
    #[arg(
        long,
        env = "WA8S_STATE_FILE",
        default_value = "/var/lib/wa8s/node-installer.json"
    )]
    state_file: PathBuf,
    /// A registry the node's containerd pulls from through a mirror (the operator's
    /// --mirror): written as the registry's hosts.toml.
    #[arg(long = "mirror", value_name = "REGISTRY=MIRROR")]
    mirrors: Vec<String>,
    /// A registry spoken to over plain HTTP (the operator's --insecure-registry).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    /// CA certificates (PEM file in this container) trusted for a registry (the operator's
    /// --registry-ca): copied beside the registry's hosts.toml.
    #[arg(long = "registry-ca", value_name = "REGISTRY=FILE")]
    registry_cas: Vec<String>,
    /// The node to label (the DaemonSet passes spec.nodeName); none: no label.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
}

fn duration(flag: &str, text: &str) -> Result<Duration> {
    parse_duration_ms(text)
        .map(Duration::from_millis)
        .ok_or_else(|| anyhow!("--{flag} {text:?}: expected a duration such as 90s or 2m"))
}

impl NodeArgs {
    fn options(&self) -> Result<Options> {
        let shim = match &self.shim {
            Some(s) => s.clone(),
            None => std::env::current_exe()
                .context("finding this binary (to find the shim next to it)")?
                .with_file_name(SHIM_NAME),
        };
        let restart = match (self.restart.as_str(), &self.restart_command) {
            ("auto", _) => Restart::Auto,
            ("none", _) => Restart::None,
            ("systemd", _) => Restart::Systemd(self.restart_unit.clone()),
            ("command", Some(c)) if !c.trim().is_empty() => Restart::Command(c.clone()),
            ("command", _) => bail!("--restart command needs --restart-command"),
            (other, _) => {
                bail!("--restart {other:?}: expected auto, systemd, command or none")
            }
        };
        let mut o = Options::new(&self.root, shim);
        o.config = self.config.clone();
        o.new_config_version = self.new_config_version;
        o.set_shim_dir(self.shim_dir.clone());
        o.restart = restart;
        o.socket = self.socket.clone();
        o.restart_timeout = duration("restart-timeout", &self.restart_timeout)?;
        o.state_file = self.state_file.clone();
        o.registry.insecure = self.insecure.clone();
        for m in &self.mirrors {
            o.registry.add_mirror_setting(m)?;
        }
        for ca in &self.registry_cas {
            o.registry.add_ca_setting(ca)?;
        }
        Ok(o)
    }
}

fn report(what: &str, outcome: &Outcome) {
    if outcome.is_noop() {
        tracing::info!("{what}: nothing to change");
        return;
    }
    tracing::info!(
        config = outcome
            .config_changed
            .as_ref()
            .map(|p| p.display().to_string()),
        shim_changed = outcome.shim_changed,
        restarted = outcome.restarted,
        registry_hosts = ?outcome.hosts_changed,
        "{what}: done"
    );
}

async fn set_label(client: &Client, node_name: &str, value: Option<&str>) -> Result<()> {
    let patch = serde_json::json!({ "metadata": { "labels": { NODE_LABEL: value } } });
    Api::<Node>::all(client.clone())
        .patch(node_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("setting label {NODE_LABEL}={value:?} on node {node_name}"))?;
    Ok(())
}

/// Waits until the kubelet reports this pod's containers running, plus a moment. Restarting
/// containerd while the kubelet still waits on it to start this very container orphans the
/// container: the pod stays in ContainerCreating, its name reserved, until the kubelet's
/// retries give up on it (minutes, seen in the install test). Gives up waiting after two
/// minutes (a pod it cannot read) and goes on.
async fn wait_until_started(client: &Client, namespace: &str, pod: &str) {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match pods.get(pod).await {
            Ok(p) => {
                let statuses = p
                    .status
                    .and_then(|s| s.container_statuses)
                    .unwrap_or_default();
                let running = !statuses.is_empty()
                    && statuses
                        .iter()
                        .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
                if running {
                    // The status is written after the kubelet's start call returned; the pause
                    // covers a status written from a relist that raced ahead of it.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    return;
                }
            }
            Err(e) => tracing::warn!("reading pod {namespace}/{pod}: {e}"),
        }
        if Instant::now() > deadline {
            tracing::warn!(
                "pod {namespace}/{pod} was not reported running within 2m; going on anyway"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await; // poll interval
    }
}

/// Whether the chart's pre-delete hook asked for uninstall.
async fn uninstall_requested(api: &Api<DaemonSet>, name: &str) -> Result<bool> {
    let ds = api
        .get(name)
        .await
        .with_context(|| format!("reading DaemonSet {name}"))?;
    Ok(ds
        .metadata
        .annotations
        .is_some_and(|a| a.get(UNINSTALL_ANNOTATION).is_some_and(|v| v == "true")))
}

/// Installs on this node and labels it once containerd runs the runtime.
async fn prepare(
    options: &Options,
    client: Option<&Client>,
    node_name: Option<&str>,
) -> Result<()> {
    let blocking = options.clone();
    let outcome = tokio::task::spawn_blocking(move || node::install(&blocking)).await??;
    report("install", &outcome);
    let active = outcome.config_changed.is_none() || outcome.restarted.is_some();
    if let (Some(client), Some(name)) = (client, node_name) {
        if active {
            set_label(client, name, Some(NODE_LABEL_READY)).await?;
            tracing::info!(node = %name, "labelled {NODE_LABEL}={NODE_LABEL_READY}");
        } else {
            tracing::warn!(
                "containerd was not restarted (--restart none): the node is labelled once containerd has read the new configuration and the installer runs again"
            );
        }
    }
    Ok(())
}

async fn install(node: NodeArgs, once: bool, max_unavailable: Option<u32>) -> Result<()> {
    let options = node.options()?;
    let client = match &node.node_name {
        Some(_) => Some(
            Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?,
        ),
        None => None,
    };
    // The DaemonSet's pod watches for the chart's uninstall request.
    let daemonset = std::env::var("DAEMONSET_NAME").ok();
    let namespace = std::env::var("POD_NAMESPACE").ok();
    if let (Some(c), Some(n), Ok(pod)) = (&client, &namespace, std::env::var("POD_NAME")) {
        wait_until_started(c, n, &pod).await;
    }
    let watch = match (&client, daemonset, namespace.clone(), once) {
        (Some(c), Some(d), Some(n), false) => {
            Some((Api::<DaemonSet>::namespaced(c.clone(), &n), d))
        }
        _ => None,
    };
    // A pod (re)started after the request (evicted, node rebooted) must not prepare the
    // node again while `helm uninstall` waits for it to be restored.
    let mut uninstalled = false;
    if let Some((api, name)) = &watch
        && uninstall_requested(api, name).await?
    {
        tracing::info!("the chart is being uninstalled: restoring the node instead of installing");
        uninstall_node(&options, client.as_ref(), node.node_name.as_deref()).await?;
        uninstalled = true;
    }
    if !uninstalled {
        let slots = match (&client, &watch, &node.node_name, max_unavailable) {
            (Some(c), Some((_, daemonset)), Some(name), Some(n)) => Some(Slots::new(
                Api::namespaced(c.clone(), namespace.as_deref().unwrap_or("default")),
                daemonset,
                n,
                name,
                options.restart_timeout + Duration::from_secs(120),
            )),
            _ => None,
        };
        let held = match &slots {
            Some(s) => Some(s.acquire().await),
            None => None,
        };
        let prepared = prepare(&options, client.as_ref(), node.node_name.as_deref()).await;
        if let Some(h) = held {
            h.release().await;
        }
        prepared?;
    }
    if once {
        return Ok(());
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut uninstalled = false;
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: leaving the node prepared (uninstall happens only when the chart is uninstalled)");
                return Ok(());
            }
            // One object, rarely changing: a poll is simpler than a watch and as good.
            _ = tokio::time::sleep(Duration::from_secs(5)), if watch.is_some() && !uninstalled => {
                let Some((api, name)) = &watch else { continue };
                match uninstall_requested(api, name).await {
                    Ok(true) => {
                        uninstall_node(&options, client.as_ref(), node.node_name.as_deref()).await?;
                        uninstalled = true;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!("{e:#}"),
                }
            }
        }
    }
}

/// Restores the node and takes its label off.
async fn uninstall_node(
    options: &Options,
    client: Option<&Client>,
    node_name: Option<&str>,
) -> Result<()> {
    let blocking = options.clone();
    let outcome = tokio::task::spawn_blocking(move || node::uninstall(&blocking)).await??;
    report("uninstall", &outcome);
    if let (Some(client), Some(name)) = (client, node_name) {
        set_label(client, name, None).await?;
    }
    Ok(())
}

async fn uninstall(node: NodeArgs) -> Result<()> {
    let options = node.options()?;
    let outcome = tokio::task::spawn_blocking(move || node::uninstall(&options)).await??;
    report("uninstall", &outcome);
    if let Some(name) = &node.node_name {
        let client = Client::try_default()
            .await
            .context("connecting to the Kubernetes API")?;
        set_label(&client, name, None).await?;
    }
    Ok(())
}

fn ready(node: &NodeArgs) -> Result<()> {
    let options = node.options()?;
    match node::read_record(&options)? {
        Some(r) if !r.restart_pending => Ok(()),
        Some(_) => bail!("containerd has not been restarted since the runtime was added"),
        None => bail!("not installed on this node yet"),
    }
}

async fn uninstall_all(daemonset: &str, namespace: &str, timeout: Duration) -> Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let patch =
        serde_json::json!({ "metadata": { "annotations": { UNINSTALL_ANNOTATION: "true" } } });
    Api::<DaemonSet>::namespaced(client.clone(), namespace)
        .patch(daemonset, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("annotating DaemonSet {namespace}/{daemonset}"))?;
    let nodes = Api::<Node>::all(client);
    let started = Instant::now();
    loop {
        let labelled: Vec<String> = nodes
            .list_metadata(&ListParams::default().labels(NODE_LABEL))
            .await
            .context("listing prepared nodes")?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        if labelled.is_empty() {
            tracing::info!("every node is restored");
            return Ok(());
        }
        if started.elapsed() > timeout {
            // Not an error: failing the hook would block `helm uninstall` for nodes that may
            // be gone for good; the record on each node lets `wa8s-node-installer uninstall`
            // finish there later.
            tracing::warn!(
                nodes = ?labelled,
                "these nodes were not restored within {timeout:?}; run `wa8s-node-installer uninstall` on them"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await; // poll interval
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // kube's TLS stack links both rustls providers; pick one for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let logging = wa8s_telemetry::Logging {
        format: cli.log_format,
        ..wa8s_telemetry::Logging::new("info")
    };
    let _spans = match wa8s_telemetry::init_logging(&logging) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wa8s-node-installer: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Cmd::Install {
            node,
            once,
            max_unavailable,
        } => install(node, once, max_unavailable).await,
        Cmd::Uninstall { node } => uninstall(node).await,
        Cmd::Ready { node } => ready(&node),
        Cmd::UninstallAll {
            daemonset,
            namespace,
            timeout,
        } => match duration("timeout", &timeout) {
            Ok(t) => uninstall_all(&daemonset, &namespace, t).await,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Also the container's termination message (terminationMessagePolicy
            // FallbackToLogsOnError), so `kubectl describe pod` shows why.
            tracing::error!("{e:#}");
            eprintln!("wa8s-node-installer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
