//! `wa8s-cluster up|down|status|kubeconfig [--state-dir DIR] [--shim-dir DIR]` — the local
//! single-node cluster for trying wa8s: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, a registry on 127.0.0.1:5000 that also stands in for `ghcr.io`, and a node
//! (containerd with the wa8s shim, CNI bridge, kubelet). `up` is idempotent; `down` stops
//! every process by PID and removes everything the cluster made.

use std::path::PathBuf;

use anyhow::{Context, bail};
use wa8s_e2e::control_plane::{self, ControlPlane};
use wa8s_e2e::node::NodeOptions;
use wa8s_e2e::process::Lifetime;

const USAGE: &str =
    "usage: wa8s-cluster up|down|status|kubeconfig [--state-dir DIR] [--shim-dir DIR]";
/// The local registry; `ghcr.io` is mirrored to it (the air-gapped setup).
const REGISTRY: &str = "127.0.0.1:5000";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().context(USAGE)?;
    let mut state_dir = wa8s_e2e::cache_dir().join("run").join("cluster");
    // Beside this binary in target/<profile>/ unless told otherwise.
    let mut shim_dir = std::env::current_exe()?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--state-dir" => state_dir = PathBuf::from(args.next().context(USAGE)?),
            "--shim-dir" => shim_dir = PathBuf::from(args.next().context(USAGE)?),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let kubeconfig = state_dir.join("kubeconfig");
    match command.as_str() {
        "up" => {
            if control_plane::is_up(&state_dir) {
                eprintln!("cluster already running ({})", state_dir.display());
            } else {
                if !shim_dir.join("containerd-shim-wa8s-v1").is_file() {
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
                        wa8s_runtime: true,
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
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
    Ok(())
}
