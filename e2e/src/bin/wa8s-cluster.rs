//! `wa8s-cluster up|down|status|kubeconfig|import-images|chart-values` — the local
//! single-node cluster for trying wa8s: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, a registry on 127.0.0.1:5000 that also stands in for `ghcr.io`, and a node
//! (containerd, CNI bridge, kubelet). `up` is idempotent; `down` stops every process by PID
//! and removes everything the cluster made.
//!
//! `up --without-wa8s` starts the node as users have theirs before `helm install wa8s`: its
//! containerd knows nothing of the runtime, and the chart's node installer adds it.
//! `import-images TAR...` loads image tarballs into the node's containerd (there is no
//! Docker here to push them from); `chart-values` prints the `--set` values that install the
//! chart on this node, one per line.

use std::path::PathBuf;

use anyhow::{Context, bail};
use wa8s_e2e::control_plane::{self, ControlPlane};
use wa8s_e2e::node::{self, NodeOptions};
use wa8s_e2e::process::Lifetime;

const USAGE: &str = "usage: wa8s-cluster [--state-dir DIR] up [--shim-dir DIR | --without-wa8s]
       wa8s-cluster [--state-dir DIR] down|status|kubeconfig
       wa8s-cluster [--state-dir DIR] import-images TARBALL...
       wa8s-cluster [--state-dir DIR] chart-values [--operator-http-port PORT]";
/// The local registry; `ghcr.io` is mirrored to it (the air-gapped setup).
const REGISTRY: &str = "127.0.0.1:5000";

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain on one line; no backtrace for a person at a terminal.
            eprintln!("wa8s-cluster: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut command = String::new();
    let mut state_dir = wa8s_e2e::cache_dir().join("run").join("cluster");
    // Beside this binary in target/<profile>/ unless told otherwise.
    let mut shim_dir = std::env::current_exe()?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let mut without_wa8s = false;
    let mut operator_http_port: u16 = 18081;
    let mut files = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--state-dir" => state_dir = PathBuf::from(args.next().context(USAGE)?),
            "--shim-dir" => shim_dir = PathBuf::from(args.next().context(USAGE)?),
            "--without-wa8s" => without_wa8s = true,
            "--operator-http-port" => {
                let port = args.next().context(USAGE)?;
                operator_http_port = port
                    .parse()
                    .with_context(|| format!("--operator-http-port {port:?}: not a port"))?;
            }
            other if !other.starts_with('-') && command.is_empty() => command = other.to_owned(),
            other if !other.starts_with('-') && command == "import-images" => {
                files.push(PathBuf::from(other))
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let kubeconfig = state_dir.join("kubeconfig");
    match command.as_str() {
        "up" => {
            if control_plane::is_up(&state_dir) {
                eprintln!("cluster already running ({})", state_dir.display());
            } else {
                if without_wa8s {
                    shim_dir = node::installed_shim_dir(&state_dir);
                } else if !shim_dir.join("containerd-shim-wa8s-v1").is_file() {
                    bail!(
                        "no containerd-shim-wa8s-v1 in {}: build it (cargo build -p wa8s-shim) or pass --shim-dir",
                        shim_dir.display()
                    );
                }
                let mut cp = ControlPlane::start(&state_dir, Lifetime::Detached)?;
                let up = (|| -> anyhow::Result<()> {
                    cp.start_controller_manager()?;
                    cp.start_registry(REGISTRY)?;
                    cp.start_node(&NodeOptions {
                        shim_dir,
                        network: 0,
                        insecure_registries: vec![REGISTRY.to_owned()],
                        mirrors: vec![("ghcr.io".to_owned(), REGISTRY.to_owned())],
                        cluster_dns: None,
                        wa8s_runtime: !without_wa8s,
                        // The tests' node runs it; the machine's one kube-proxy table
                        // stays theirs, so both clusters can run at once.
                        kube_proxy: false,
                        // `kubectl top pods`, as the quickstart suggests.
                        metrics_server: true,
                    })?;
                    Ok(())
                })();
                if let Err(e) = up {
                    eprintln!(
                        "cluster did not come up; logs are in {}",
                        state_dir.display()
                    );
                    // Keep the logs for the reader; stop the processes.
                    return Err(e);
                }
                eprintln!(
                    "cluster ready: API server {}, registry {REGISTRY}",
                    cp.server()
                );
            }
            println!("{}", kubeconfig.display());
        }
        "down" => {
            control_plane::stop_state_dir(&state_dir);
            eprintln!("cluster stopped; removed {}", state_dir.display());
        }
        "status" => {
            if control_plane::is_up(&state_dir) {
                println!("up: KUBECONFIG={}", kubeconfig.display());
            } else {
                println!("down");
                std::process::exit(1);
            }
        }
        "kubeconfig" => println!("{}", kubeconfig.display()),
        "import-images" => {
            if files.is_empty() {
                bail!("import-images needs at least one image tarball\n{USAGE}");
            }
            if !control_plane::is_up(&state_dir) {
                bail!(
                    "the cluster in {} is not running: wa8s-cluster up",
                    state_dir.display()
                );
            }
            for f in &files {
                node::import_image(&state_dir, f)
                    .with_context(|| format!("importing {} into the node", f.display()))?;
                eprintln!("imported {}", f.display());
            }
        }
        "chart-values" => {
            let port = api_port(&kubeconfig)?;
            for v in node::chart_values(&state_dir, port, REGISTRY, operator_http_port) {
                println!("{v}");
            }
        }
        "" => bail!("no command given\n{USAGE}"),
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
    Ok(())
}

/// The API server's port, from the `server:` line of the cluster's kubeconfig.
fn api_port(kubeconfig: &std::path::Path) -> anyhow::Result<u16> {
    let text = std::fs::read_to_string(kubeconfig).with_context(|| {
        format!(
            "reading {} (is the cluster up? wa8s-cluster up)",
            kubeconfig.display()
        )
    })?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .and_then(|server| server.rsplit(':').next())
        .and_then(|port| port.trim().parse().ok())
        .with_context(|| format!("no API server port in {}", kubeconfig.display()))
}
