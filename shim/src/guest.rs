//! The process that runs one container's guest: `containerd-shim-wa8s-v1 guest BUNDLE DIGEST`.
//!
//! The shim forks it already inside the container's cgroup and the sandbox's network
//! namespace (see `sys::Confinement`). It loads the component from the verified node cache
//! (precompiled when possible), reports `ok` or the reason it cannot run on fd 4, drops every
//! privilege, waits for the start signal on fd 3, then serves or runs the guest with the
//! grants of the pod contract. Its stdout and stderr are the container's.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use wa8s_host::{
    DirGrant, EngineConfig, Grants, HostEngine, Kind, MemoryBudget, NetworkPolicy, NodeAddresses,
    PrecompileCache, Program, Server, Stdio, TrustRoots,
};

use wa8s_api::contract::IMAGE_COMPONENT_COMMAND;

use crate::component::{GuestSeccomp, NodeConfig};
use crate::spec::ContainerSpec;

pub const SUBCOMMAND: &str = "guest";
/// First argument that makes the binary compile a component into the node cache.
pub const PRECOMPILE_SUBCOMMAND: &str = "precompile";
/// Descriptor the start signal arrives on.
pub const START_FD: i32 = 3;
/// Descriptor readiness (`ok`) or the startup error is reported on.
pub const STATUS_FD: i32 = 4;
/// Descriptor of a route-netlink socket the shim opened in the node's network namespace: the
/// node's own addresses (blocked for the component unless listed literally) are read and
/// followed through it from the pod's namespace.
pub const NODE_NETLINK_FD: i32 = 5;
/// What the guest reports instead of `ok` when the node's precompile cache holds no recorded
/// artifact for its component: the shim then compiles it and starts a new guest. A warm
/// cache (the common case) so costs no extra process.
pub const UNCOMPILED: &str = "uncompiled";
/// Exit status when the guest could not be started (bad grant, unusable component).
pub const EXIT_STARTUP: i32 = 2;
/// How long in-flight requests may finish after SIGTERM; the kubelet's grace period
/// (SIGKILL after it) is the outer bound.
const DRAIN: Duration = Duration::from_secs(wa8s_api::contract::DRAIN_SECONDS);

/// Entry point; returns the exit status.
pub fn main(args: &[String]) -> i32 {
    let (Some(bundle), Some(digest)) = (args.first(), args.get(1)) else {
        eprintln!("usage: containerd-shim-wa8s-v1 guest BUNDLE DIGEST");
        return EXIT_STARTUP;
    };
    // The host's denials (memory growth, network) go to the container's log, at warn and
    // above unless WA8S_LOG says otherwise.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WA8S_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let mut status = owned_fd(STATUS_FD);
    let mut start = owned_fd(START_FD);
    let spec = match ContainerSpec::load(Path::new(bundle)) {
        Ok(s) => s,
        Err(e) => return fail(&mut status, &e.to_string()),
    };
    if let Err(e) = crate::sys::exit_on_sigterm() {
        return fail(&mut status, &format!("handling SIGTERM: {e}"));
    }
    let rootfs = spec.rootfs(Path::new(bundle));
    let node = match NodeConfig::load() {
        Ok(n) => n,
        Err(e) => return fail(&mut status, &e.to_string()),
    };
    let (spec, program) = match load_program(spec, digest, &node) {
        Ok(Some(loaded)) => loaded,
        // Not an error: the shim compiles it (outside the pod's cgroup) and starts another
        // guest. Nothing goes to the container's streams.
        Ok(None) => {
            if let Some(s) = status.as_mut() {
                let _ = writeln!(s, "{UNCOMPILED}");
            }
            return EXIT_STARTUP;
        }
        Err(message) => return fail(&mut status, &message),
    };
    let (nodes, follow_nodes) = match owned_fd(NODE_NETLINK_FD)
        .ok_or_else(|| "no node address socket was passed (fd 5)".to_owned())
        .and_then(|f| {
            NodeAddresses::watch(f.into()).map_err(|e| format!("reading the node's addresses: {e}"))
        }) {
        Ok(n) => n,
        Err(message) => return fail(&mut status, &message),
    };
    let mut grants = match grants(&spec, nodes, &node) {
        Ok(g) => g,
        Err(message) => return fail(&mut status, &message),
    };
    // From here on, mounts are this process's own.
    if let Err(e) = crate::sys::private_mount_namespace() {
        return fail(
            &mut status,
            &format!("making a private mount namespace: {e}"),
        );
    }
    if let Err(message) = bound_volumes(&mut grants, &spec, &rootfs) {
        return fail(&mut status, &message);
    }
    // Held for the life of the process: the grants now name these open directories.
    let _granted_dirs = match open_granted_dirs(&mut grants) {
        Ok(dirs) => dirs,
        Err(message) => return fail(&mut status, &message),
    };
    // Measured now, with the program loaded and before any request: what the runtime itself
    // holds is taken off the container's limit, and the rest is what the instances share.
    if let Some(limit) = spec.limits.memory_bytes.and_then(|l| u64::try_from(l).ok()) {
        match shared_budget(limit) {
            Ok(budget) => grants.limits.budget = Some(budget),
            Err(message) => return fail(&mut status, &message),
        }
    }
    // An HTTP component's port is bound now, in the pod's network namespace and before the
    // privileges go (so ports below 1024 work too): connections queue from the moment the
    // container is created and are served as soon as it starts.
    let server = match program.kind() {
        Kind::Http => {
            let addr = SocketAddr::from(([0, 0, 0, 0], spec.policy.port));
            let bound = std::net::TcpListener::bind(addr)
                .map_err(|e| format!("binding {addr}: {e}"))
                .and_then(|l| {
                    Server::on_listener(&program, grants.clone(), l, DRAIN)
                        .map_err(|e| e.to_string())
                });
            match bound {
                Ok(server) => Some(server),
                Err(message) => return fail(&mut status, &message),
            }
        }
        _ => None,
    };
    // Capabilities, the bounding set and no_new_privs are per thread: the drop must happen
    // while this is the only one (threads made later inherit it).
    if let Err(message) = only_thread() {
        return fail(&mut status, &message);
    }
    // Everything the guest needs from the node is open now: leave the node's file system.
    if let Err(message) = own_root(&spec, &rootfs) {
        return fail(&mut status, &message);
    }
    if let Err(e) = crate::sys::drop_privileges(spec.uid, spec.gid, &spec.additional_gids) {
        return fail(&mut status, &format!("dropping privileges: {e}"));
    }
    // The container's profile, then the wa8s allowlist (unless the node turned it off); the
    // kernel answers each call with the strictest of them.
    if let Err(message) = confine_syscalls(&spec, &node) {
        return fail(&mut status, &message);
    }
    if let Some(s) = status.as_mut() {
        let _ = s.write_all(b"ok\n");
    }
    drop(status);
    // Block until the shim's Start (one byte) or until it goes away (EOF: do not run).
    let mut byte = [0u8; 1];
    match start.as_mut().map(|s| s.read(&mut byte)) {
        Some(Ok(1)) => {}
        _ => return EXIT_STARTUP,
    }
    crate::sys::default_sigterm();
    if let Err(e) = follow_nodes.start() {
        eprintln!("wa8s: following the node's addresses: {e}");
        return EXIT_STARTUP;
    }
    let runtime = match crate::async_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wa8s: starting the async runtime: {e}");
            return EXIT_STARTUP;
        }
    };
    runtime.block_on(run(program, grants, server))
}

/// Room kept above the runtime's measured size for what requests cost besides their Wasm
/// memory (stores, fiber stacks, connection buffers) and for the kernel's own charges.
const RUNTIME_HEADROOM: u64 = 4 << 20;

/// The memory budget the instances share under a container limit of `limit` bytes.
fn shared_budget(limit: u64) -> Result<MemoryBudget, String> {
    let own = resident_bytes().map_err(|e| format!("measuring the runtime's memory: {e}"))?;
    let reserved = own + RUNTIME_HEADROOM;
    match limit.checked_sub(reserved).filter(|b| *b >= 1 << 20) {
        Some(budget) => {
            tracing::info!(
                limit,
                runtime = own,
                budget,
                "memory budget of the guest's instances"
            );
            Ok(MemoryBudget::new(budget))
        }
        None => Err(format!(
            "the container's memory limit ({limit} bytes) leaves no room for the component: \
             the runtime itself needs {reserved} bytes with this component loaded; raise \
             resources.memory"
        )),
    }
}

/// This process's resident memory the kernel cannot reclaim: anonymous and shared pages.
/// File-backed pages (the binary, the mapped precompiled component) are charged to the
/// container too, but the kernel drops them under pressure instead of killing.
fn resident_bytes() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| std::io::Error::other(format!("no {name} in /proc/self/status")))
    };
    Ok(field("RssAnon:")? + field("RssShmem:")?)
}

/// Applies, unless the node's `guestSeccomp` says `container`, the wa8s allowlist, then the
/// container's own profile (last, since it may refuse installing further filters).
fn confine_syscalls(spec: &ContainerSpec, node: &NodeConfig) -> Result<(), String> {
    if node.guest_seccomp == GuestSeccomp::Wa8s {
        crate::seccomp::Filters::wa8s()
            .and_then(|f| f.apply())
            .map_err(|e| format!("the wa8s seccomp allowlist: {e}"))?;
    }
    if let Some(profile) = &spec.seccomp {
        profile
            .apply()
            .map_err(|e| format!("the container's seccomp profile: {e}"))?;
    }
    Ok(())
}

/// Fails unless this process has a single thread.
fn only_thread() -> Result<(), String> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(|e| format!("counting this process's threads: {e}"))?
        .count();
    if threads == 1 {
        Ok(())
    } else {
        Err(format!(
            "{threads} threads before dropping privileges; all but one would keep theirs"
        ))
    }
}

/// The files the pod's resolver reads, which the kubelet mounts into each container.
const NAME_FILES: &[&str] = &["/etc/hosts", "/etc/resolv.conf"];

/// Gives the guest a root of its own holding only `/proc` and its pod's `/etc/hosts` and
/// `/etc/resolv.conf` (the kubelet's, with the pod's host aliases and cluster DNS), so names
/// resolve as in a container of the pod and nothing of the node is reachable by path.
fn own_root(spec: &ContainerSpec, rootfs: &Path) -> Result<(), String> {
    let files: Vec<(PathBuf, &str)> = NAME_FILES
        .iter()
        .filter_map(|target| Some((spec.mounts.get(*target)?.source.clone(), *target)))
        .collect();
    crate::sys::enter_root(rootfs, &files).map_err(|e| {
        format!(
            "entering the container's own root at {}: {e}",
            rootfs.display()
        )
    })
}

/// Opens each granted directory while the process may still reach it, and points the grant
/// at the open directory (`/proc/self/fd/N`). The kubelet keeps volumes under
/// `/var/lib/kubelet/pods/<uid>/`, which only root may traverse; after dropping to the
/// pod's user the guest could otherwise not open them, though the volume itself is the
/// pod's to use.
fn open_granted_dirs(grants: &mut Grants) -> Result<Vec<std::fs::File>, String> {
    use std::os::fd::AsRawFd;
    let mut held = Vec::with_capacity(grants.dirs.len());
    for d in &mut grants.dirs {
        let dir = std::fs::File::open(&d.host).map_err(|e| {
            format!(
                "grant directory {}: cannot open {}: {e}",
                d.guest,
                d.host.display()
            )
        })?;
        d.host = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        held.push(dir);
    }
    Ok(held)
}

/// Puts each `maxSize` grant's bound in the kernel (see `bounded.rs`); the host then only
/// compares writes with the free space, so the guest sees ENOSPC before a write, not a
/// stream closed part-way.
/// (`rootfs` serves as a scratch mount point: it is covered by the guest's own root later.)
fn bound_volumes(grants: &mut Grants, spec: &ContainerSpec, rootfs: &Path) -> Result<(), String> {
    for d in &mut grants.dirs {
        if let Some(max) = d.max_bytes {
            crate::bounded::mount_bounded(&d.host, max, spec.uid, spec.gid, rootfs)?;
            d.bound_by_kernel = true;
        }
    }
    Ok(())
}

fn owned_fd(fd: i32) -> Option<std::fs::File> {
    crate::sys::inherited_fd(fd)
}

fn fail(status: &mut Option<std::fs::File>, message: &str) -> i32 {
    eprintln!("wa8s: {message}");
    if let Some(s) = status.as_mut() {
        let _ = writeln!(s, "error: {message}");
    }
    EXIT_STARTUP
}

/// `containerd-shim-wa8s-v1 precompile BUNDLE DIGEST`: puts the component's compiled form in
/// the node's precompile cache (run by the shim outside the container's cgroup). Prints `ok`
/// when it is there; else exits 2 with the reason on stderr.
pub fn precompile_main(args: &[String]) -> i32 {
    let (Some(bundle), Some(digest)) = (args.first(), args.get(1)) else {
        eprintln!("usage: containerd-shim-wa8s-v1 {PRECOMPILE_SUBCOMMAND} BUNDLE DIGEST");
        return EXIT_STARTUP;
    };
    // A cache hit only checks the record; the guest is the one that loads the code.
    let warmed = ContainerSpec::load(Path::new(bundle))
        .map_err(|e| e.to_string())
        .and_then(|spec| {
            let node = NodeConfig::load().map_err(|e| e.to_string())?;
            Cached::open(spec, digest, &node)
        })
        .and_then(|c| {
            c.precompiled
                .ensure(&c.engine, digest, &c.bytes)
                .map_err(|e| e.to_string())
        });
    match warmed {
        Ok(_) => {
            println!("ok");
            0
        }
        Err(message) => {
            eprintln!("wa8s: {message}");
            EXIT_STARTUP
        }
    }
}

/// What the precompile process and the guest both need: the spec, the component's bytes,
/// the engine and the precompile cache.
struct Cached {
    spec: ContainerSpec,
    bytes: Vec<u8>,
    engine: HostEngine,
    precompiled: PrecompileCache,
}

impl Cached {
    fn open(spec: ContainerSpec, digest: &str, node: &NodeConfig) -> Result<Self, String> {
        let blobs = node.blobs().map_err(|e| e.to_string())?;
        let bytes = blobs
            .get(digest)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("component {digest} is not in the node cache"))?;
        // The same engine configuration in the precompile process and the guest, so the
        // cache entry one writes is the one the other reads.
        let engine = HostEngine::new(&EngineConfig {
            pooled_instances: Some(spec.policy.limits.max_concurrent_requests.clamp(1, 1000)),
            ..EngineConfig::default()
        })
        .map_err(|e| e.to_string())?;
        let precompiled =
            PrecompileCache::new(node.precompiled_dir()).map_err(|e| e.to_string())?;
        Ok(Cached {
            spec,
            bytes,
            engine,
            precompiled,
        })
    }
}

/// The spec and the program from the precompile cache's recorded artifact; `None` when it
/// has none. Compiling here would run in the pod's cgroup (and start compiler threads
/// before the privileges are dropped), so that is the shim's precompile process's job.
fn load_program(
    spec: ContainerSpec,
    digest: &str,
    node: &NodeConfig,
) -> Result<Option<(ContainerSpec, Program)>, String> {
    let c = Cached::open(spec, digest, node)?;
    let program = c
        .precompiled
        .load_recorded(&c.engine, digest, &c.bytes)
        .map_err(|e| e.to_string())?;
    Ok(program.map(|p| (c.spec, p)))
}

/// The grants of the pod contract; every error is a sentence for the user.
fn grants(spec: &ContainerSpec, nodes: NodeAddresses, node: &NodeConfig) -> Result<Grants, String> {
    let policy = &spec.policy;

    let mut grants = Grants {
        // The guest's argv[0] is a program name, not the placeholder command.
        args: match spec.args.split_first() {
            None => vec!["main".into()],
            Some((first, rest)) if first == IMAGE_COMPONENT_COMMAND => {
                std::iter::once("main".to_owned())
                    .chain(rest.iter().cloned())
                    .collect()
            }
            Some(_) => spec.args.clone(),
        },
        stdout: Stdio::Inherit,
        stderr: Stdio::Inherit,
        ..Grants::default()
    };
    // Only the variables the contract names; the kubelet's own (service links,
    // KUBERNETES_*) stay hidden.
    grants.env = spec
        .env
        .iter()
        .filter(|(k, _)| policy.env.iter().any(|n| n == k))
        .cloned()
        .collect();
    for fs in &policy.fs {
        let volume = spec.mounts.get(&fs.path).ok_or_else(|| {
            format!(
                "the policy grants {} but the container mounts no volume there",
                fs.path
            )
        })?;
        grants.dirs.push(DirGrant {
            host: volume.source.clone(),
            guest: fs.path.clone(),
            // A volume mounted read-only stays read-only whatever the grant says.
            read_only: fs.read_only || volume.read_only,
            max_bytes: fs.max_size_bytes,
            bound_by_kernel: false,
        });
    }
    // The node's own addresses stay blocked like loopback: a granted name pointed at the
    // node (by DNS) must not reach the kubelet or other node services.
    grants.network = NetworkPolicy::new(&policy.allowed_hosts, nodes).map_err(|e| e.to_string())?;
    if let Some(ca) = &node.guest_ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("guestCaFile {}: {e}", ca.display()))?;
        grants.trust = TrustRoots::with_extra_pem(&ca.display().to_string(), &pem)
            .map_err(|e| e.to_string())?;
    }
    grants.limits.memory_bytes = policy.limits.memory_bytes;
    grants.limits.timeout = Some(Duration::from_millis(policy.limits.request_timeout_ms));
    grants.limits.max_concurrent_requests = policy.limits.max_concurrent_requests as usize;
    grants.validate().map_err(|e| e.to_string())?;
    Ok(grants)
}

/// Serves (an HTTP component, bound at create) or runs the program to completion.
async fn run(program: Program, grants: Grants, server: Option<Server>) -> i32 {
    match server {
        Some(server) => match server.run(terminated()).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("wa8s: {e}");
                1
            }
        },
        None => {
            // A command runs to completion; SIGTERM ends it like any process.
            tokio::select! {
                status = program.run(&grants) => match status {
                    Ok(s) => s.code(),
                    Err(e) => {
                        eprintln!("wa8s: {e}");
                        match e {
                            wa8s_host::Error::Deadline(_) => 124,
                            wa8s_host::Error::Trap(_) => 134,
                            _ => 1,
                        }
                    }
                },
                () = terminated() => 143,
            }
        }
    }
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wa8s_api::contract::{FsPolicy, Policy};

    /// A bundle whose container mounts `volume` at /data with `options`, under a policy that
    /// grants /data writable.
    fn bundle(volume: &Path, options: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut policy = Policy::deny_all();
        policy.fs.push(FsPolicy {
            path: "/data".into(),
            read_only: false,
            max_size_bytes: None,
        });
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["/"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "annotations": policy.to_annotations(),
            "mounts": [{
                "destination": "/data",
                "type": "bind",
                "source": volume,
                "options": options,
            }],
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config");
        dir
    }

    #[test]
    fn a_volume_mounted_read_only_stays_read_only_under_a_writable_grant() {
        let volume = tempfile::tempdir().expect("volume");
        for (options, read_only) in [(vec!["rbind", "ro"], true), (vec!["rbind", "rw"], false)] {
            let b = bundle(volume.path(), &options);
            let spec = ContainerSpec::load(b.path()).expect("spec");
            let grants =
                grants(&spec, NodeAddresses::default(), &NodeConfig::default()).expect("grants");
            assert_eq!(grants.dirs.len(), 1);
            assert_eq!(grants.dirs[0].read_only, read_only, "{options:?}");
        }
    }
}
