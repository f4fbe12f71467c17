//! `containerd-shim-wa8s-v1`: the containerd shim v2 for WebAssembly components
//! (runtime type `io.containerd.wa8s.v1`). With `guest` as first argument it is instead the
//! per-container process that runs guest code (see `guest.rs`).

mod bounded;
mod cgroup;
mod component;
mod containers;
mod content;
mod error;
mod guest;
mod launch;
mod protocol;
mod seccomp;
mod service;
mod spec;
mod sys;

/// The runtime type containerd knows this shim by.
const RUNTIME_ID: &str = "io.containerd.wa8s.v1";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // As containerd-shim-runc-v2 answers `-v`: what a node's operator (or a release's smoke
    // test) asks first.
    if matches!(args.get(1).map(String::as_str), Some("-v" | "--version")) {
        println!(
            "containerd-shim-wa8s-v1 {} (runtime {RUNTIME_ID})",
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    if args.get(1).map(String::as_str) == Some(protocol::GUEST_SUBCOMMAND) {
        std::process::exit(guest::main(&args[2..]));
    }
    if args.get(1).map(String::as_str) == Some(protocol::PRECOMPILE_SUBCOMMAND) {
        std::process::exit(guest::precompile_main(&args[2..]));
    }
    let runtime = match async_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(containerd_shim::asynchronous::run::<service::Service>(
        RUNTIME_ID, None,
    ));
}

/// The runtime the shim and each guest run on: two workers (one pod's work, a 2-core node).
pub(crate) fn async_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
