//! `wa8s-cluster up|down|status|kubeconfig [--state-dir DIR]` — the local control plane for
//! trying wa8s and for the tests. `up` is idempotent; `down` stops every process by PID and
//! removes the state directory.

use std::path::PathBuf;

use anyhow::{Context, bail};
use wa8s_e2e::control_plane::{self, ControlPlane};
use wa8s_e2e::process::Lifetime;

const USAGE: &str = "usage: wa8s-cluster up|down|status|kubeconfig [--state-dir DIR]";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().context(USAGE)?;
    let mut state_dir = wa8s_e2e::cache_dir().join("run").join("cluster");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--state-dir" => state_dir = PathBuf::from(args.next().context(USAGE)?),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let kubeconfig = state_dir.join("kubeconfig");
    match command.as_str() {
        "up" => {
            if control_plane::is_up(&state_dir) {
                eprintln!("control plane already running ({})", state_dir.display());
            } else {
                let cp = ControlPlane::start(&state_dir, Lifetime::Detached)?;
                eprintln!("control plane ready at {}", cp.server());
            }
            println!("{}", kubeconfig.display());
        }
        "down" => {
            control_plane::stop_state_dir(&state_dir);
            eprintln!("control plane stopped; removed {}", state_dir.display());
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
