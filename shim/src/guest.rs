//! The process that runs one container's guest: `containerd-shim-wa8s-v1 guest BUNDLE DIGEST`.
//!
//! The shim forks it already inside the container's cgroup and the sandbox's network
//! namespace (see `sys::Confinement`). It loads the component from the verified node cache
//! (precompiled when possible), reports that it is ready or why it cannot run on fd 4 (see
//! `protocol.rs`), drops every privilege, waits for the start on fd 3, then serves or runs the
//! guest with the
//! grants of the pod contract. Its stdout and stderr are the container's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use wa8s_host::{
    DirGrant, EngineConfig, Grants, HostEngine, Kind, MemoryBudget, NetworkPolicy, NodeAddresses,
    PrecompileCache, Program, Server, Stdio, TrustRoots,
};
use wa8s_oci::VerifiedBlob;

use wa8s_api::contract::{self, IMAGE_COMPONENT_COMMAND};

use crate::component::{GuestSeccomp, NodeConfig};
use crate::protocol::{
    self, Failure, FromGuest, FromPrecompile, NODE_NETLINK_FD, PRECOMPILE_SUBCOMMAND, START_FD,
    STATUS_FD, ToGuest,
};
use crate::spec::ContainerSpec;

/// Exit status when the guest could not be started (bad grant, unusable component).
pub const EXIT_STARTUP: i32 = 2;
/// How long in-flight requests may finish after SIGTERM; the kubelet's grace period
/// (SIGKILL after it) is the outer bound.
const DRAIN: Duration = Duration::from_secs(wa8s_api::contract::DRAIN_SECONDS);

/// Why a guest (or precompile) process cannot run the component. It reaches the shim as a
/// [`Failure`]: the message and each cause's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] crate::spec::Error),
    #[error(transparent)]
    Node(#[from] crate::component::Error),
    #[error(transparent)]
    Cache(#[from] wa8s_oci::Error),
    #[error(transparent)]
    Host(#[from] wa8s_host::Error),
    #[error("component {0} is not in the node cache")]
    NotCached(String),
    #[error("no node address socket was passed (fd {NODE_NETLINK_FD})")]
    NoNodeSocket,
    #[error("the policy grants {0} but the container mounts no volume there")]
    NoVolume(String),
    #[error(
        "the container's memory limit ({limit} bytes) leaves no room for the component: \
         the runtime itself needs {reserved} bytes with this component loaded; raise \
         resources.memory"
    )]
    NoRoom { limit: u64, reserved: u64 },
    #[error("{0} threads before dropping privileges; all but one would keep theirs")]
    Threads(usize),
    #[error("{what}: {source}")]
    Seccomp {
        what: &'static str,
        #[source]
        source: crate::seccomp::Error,
    },
    /// A `maxSize` bound that cannot be put in the kernel.
    #[error("{0}")]
    Bounded(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The guest's diagnostics (its denials, its memory budget) go to the container's stderr,
/// which is `kubectl logs`: warnings and up unless the container's `WA8S_LOG` says otherwise
/// (the shim hands the process the container's settings, `contract::is_host_env`), as text or
/// as JSON (`WA8S_LOG_FORMAT`). No timestamps: the container log adds its own.
fn log_to_container() {
    let format = match wa8s_telemetry::LogFormat::from_env() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("wa8s: {e}; writing text");
            wa8s_telemetry::LogFormat::Text
        }
    };
    let logging = wa8s_telemetry::Logging {
        format,
        timestamps: false,
        targets: false,
        ..wa8s_telemetry::Logging::new("warn")
    };
    // The guest's spans are the host's request spans (wa8s_host::Telemetry), not these.
    if let Err(e) = wa8s_telemetry::init_logging(&logging) {
        eprintln!("wa8s: {e}; logging at warn");
        let _ = wa8s_telemetry::init_logging(&wa8s_telemetry::Logging {
            default_filter: "warn",
            ..logging
        });
    }
}

/// Entry point; returns the exit status.
pub fn main(args: &[String]) -> i32 {
    let (Some(bundle), Some(digest)) = (args.first(), args.get(1)) else {
        eprintln!("usage: containerd-shim-wa8s-v1 guest BUNDLE DIGEST");
        return EXIT_STARTUP;
    };
    log_to_container();
    let compiled_now = args.get(2).map(String::as_str) == Some(protocol::COMPILED_NOW_ARG);
    let mut status = owned_fd(STATUS_FD);
    let start = owned_fd(START_FD);
    let ready = match prepare(Path::new(bundle), digest) {
        Ok(Some(ready)) => ready,
        // Not an error: the shim compiles it (outside the pod's cgroup) and starts another
        // guest. Nothing goes to the container's streams.
        Ok(None) => {
            report(&mut status, &FromGuest::Uncompiled);
            return EXIT_STARTUP;
        }
        Err(e) => {
            let error = Failure::of(&e);
            eprintln!("wa8s: {error}");
            report(&mut status, &FromGuest::Failed { error });
            return EXIT_STARTUP;
        }
    };
    report(&mut status, &FromGuest::Ready);
    drop(status);
    // Block until the shim's start or until it goes away (end of file: do not run).
    let mut line = String::new();
    if let Some(s) = start {
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line);
    }
    match protocol::receive::<ToGuest>(&line) {
        Ok(ToGuest::Start) => {}
        Err(protocol::Error::Silent { .. }) => return EXIT_STARTUP,
        Err(e) => {
            eprintln!("wa8s: {e}");
            return EXIT_STARTUP;
        }
    }
    crate::sys::default_sigterm();
    let Ready {
        program,
        grants,
        server,
        metrics,
        follow_nodes,
        granted_dirs: _granted_dirs,
    } = ready;
    grants.telemetry.precompile_cache(!compiled_now);
    // Confined now: the exporter's and the access log's threads may start.
    if let Err(e) = grants.telemetry.log_access_from_env() {
        tracing::warn!(
            "{}; serving without an access log",
            wa8s_api::report::report(&e)
        );
    }
    match grants
        .telemetry
        .export_traces_from_env("wa8s", &grants.trust)
    {
        Ok(true) => tracing::info!("exporting request traces over OTLP"),
        Ok(false) => {}
        Err(e) => tracing::warn!("{}; serving without traces", wa8s_api::report::report(&e)),
    }
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
    runtime.block_on(run(program, grants, server, metrics))
}

/// A guest loaded, confined and waiting for the start.
struct Ready {
    program: Program,
    grants: Grants,
    /// An HTTP component's server, bound already.
    server: Option<Server>,
    /// Its metrics port, bound already.
    metrics: Option<std::net::TcpListener>,
    follow_nodes: wa8s_host::Follow,
    /// Held for the life of the process: the grants name these open directories.
    granted_dirs: Vec<std::fs::File>,
}

/// Everything up to readiness; `None` when the component is not compiled yet.
fn prepare(bundle: &Path, digest: &str) -> Result<Option<Ready>, Error> {
    let spec = ContainerSpec::load(bundle)?;
    crate::sys::exit_on_sigterm().map_err(io("handling SIGTERM"))?;
    let rootfs = spec.rootfs(bundle);
    let node = NodeConfig::load()?;
    let Some((spec, program)) = load_program(spec, digest, &node)? else {
        return Ok(None);
    };
    let socket = owned_fd(NODE_NETLINK_FD).ok_or(Error::NoNodeSocket)?;
    let (nodes, follow_nodes) =
        NodeAddresses::watch(socket.into()).map_err(io("reading the node's addresses"))?;
    let mut grants = grants(&spec, nodes, &node)?;
    // From here on, mounts are this process's own.
    crate::sys::private_mount_namespace().map_err(io("making a private mount namespace"))?;
    bound_volumes(&mut grants, &spec, &rootfs)?;
    let granted_dirs = open_granted_dirs(&mut grants)?;
    // Measured now, with the program loaded and before any request: what the runtime itself
    // holds is taken off the container's limit, and the rest is what the instances share.
    if let Some(limit) = spec.limits.memory_bytes.and_then(|l| u64::try_from(l).ok()) {
        grants.limits.budget = Some(shared_budget(limit)?);
    }
    // An HTTP component's port is bound now, in the pod's network namespace and before the
    // privileges go (so ports below 1024 work too): connections queue from the moment the
    // container is created and are served as soon as it starts.
    let (server, metrics) = match program.kind() {
        Kind::Http => {
            let addr = SocketAddr::from(([0, 0, 0, 0], spec.policy.port));
            let listener =
                std::net::TcpListener::bind(addr).map_err(io(format!("binding {addr}")))?;
            let metrics_addr = SocketAddr::from(([0, 0, 0, 0], contract::METRICS_PORT));
            // One metrics port per pod: a second HTTP container of the same pod (or a
            // component of a hand-written pod serving on 9464 itself) serves without one.
            let metrics = match std::net::TcpListener::bind(metrics_addr) {
                Ok(l) => Some(l),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tracing::warn!(
                        "the metrics port {metrics_addr} is taken in this pod: this container's metrics are not served"
                    );
                    None
                }
                Err(e) => return Err(io(format!("binding the metrics port {metrics_addr}"))(e)),
            };
            let server = Server::on_listener(&program, grants.clone(), listener, DRAIN)?;
            (Some(server), metrics)
        }
        _ => (None, None),
    };
    // Capabilities, the bounding set and no_new_privs are per thread: the drop must happen
    // while this is the only one (threads made later inherit it).
    only_thread()?;
    // Everything the guest needs from the node is open now: leave the node's file system.
    own_root(&spec, &rootfs)?;
    crate::sys::drop_privileges(spec.uid, spec.gid, &spec.additional_gids)
        .map_err(io("dropping privileges"))?;
    // The container's profile, then the wa8s allowlist (unless the node turned it off); the
    // kernel answers each call with the strictest of them.
    confine_syscalls(&spec, &node)?;
    Ok(Some(Ready {
        program,
        grants,
        server,
        metrics,
        follow_nodes,
        granted_dirs,
    }))
}

/// Room kept above the runtime's measured size for what requests cost besides their Wasm
/// memory (stores, fiber stacks, connection buffers) and for the kernel's own charges.
const RUNTIME_HEADROOM: u64 = 4 << 20;

/// The memory budget the instances share under a container limit of `limit` bytes.
fn shared_budget(limit: u64) -> Result<MemoryBudget, Error> {
    let own = resident_bytes().map_err(io("measuring the runtime's memory"))?;
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
        None => Err(Error::NoRoom { limit, reserved }),
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
fn confine_syscalls(spec: &ContainerSpec, node: &NodeConfig) -> Result<(), Error> {
    let seccomp = |what| move |source| Error::Seccomp { what, source };
    if node.guest_seccomp == GuestSeccomp::Wa8s {
        crate::seccomp::Filters::wa8s()
            .and_then(|f| f.apply())
            .map_err(seccomp("the wa8s seccomp allowlist"))?;
    }
    if let Some(profile) = &spec.seccomp {
        profile
            .apply()
            .map_err(seccomp("the container's seccomp profile"))?;
    }
    Ok(())
}

/// Fails unless this process has a single thread.
fn only_thread() -> Result<(), Error> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(io("counting this process's threads"))?
        .count();
    if threads == 1 {
        Ok(())
    } else {
        Err(Error::Threads(threads))
    }
}

/// The files the pod's resolver reads, which the kubelet mounts into each container.
const NAME_FILES: &[&str] = &["/etc/hosts", "/etc/resolv.conf"];

/// Gives the guest a root of its own holding only `/proc` and its pod's `/etc/hosts` and
/// `/etc/resolv.conf` (the kubelet's, with the pod's host aliases and cluster DNS), so names
/// resolve as in a container of the pod and nothing of the node is reachable by path.
fn own_root(spec: &ContainerSpec, rootfs: &Path) -> Result<(), Error> {
    let files: Vec<(PathBuf, &str)> = NAME_FILES
        .iter()
        .filter_map(|target| Some((spec.mounts.get(*target)?.source.clone(), *target)))
        .collect();
    crate::sys::enter_root(rootfs, &files).map_err(io(format!(
        "entering the container's own root at {}",
        rootfs.display()
    )))
}

/// Opens each granted directory while the process may still reach it, and points the grant
/// at the open directory (`/proc/self/fd/N`). The kubelet keeps volumes under
/// `/var/lib/kubelet/pods/<uid>/`, which only root may traverse; after dropping to the
/// pod's user the guest could otherwise not open them, though the volume itself is the
/// pod's to use.
fn open_granted_dirs(grants: &mut Grants) -> Result<Vec<std::fs::File>, Error> {
    use std::os::fd::AsRawFd;
    let mut held = Vec::with_capacity(grants.dirs.len());
    for d in &mut grants.dirs {
        let dir = std::fs::File::open(&d.host).map_err(io(format!(
            "grant directory {}: cannot open {}",
            d.guest,
            d.host.display()
        )))?;
        d.host = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        held.push(dir);
    }
    Ok(held)
}

/// Puts each `maxSize` grant's bound in the kernel (see `bounded.rs`); the host then only
/// compares writes with the free space, so the guest sees ENOSPC before a write, not a
/// stream closed part-way.
/// (`rootfs` serves as a scratch mount point: it is covered by the guest's own root later.)
fn bound_volumes(grants: &mut Grants, spec: &ContainerSpec, rootfs: &Path) -> Result<(), Error> {
    for d in &mut grants.dirs {
        if let Some(max) = d.max_bytes {
            crate::bounded::mount_bounded(&d.host, max, spec.uid, spec.gid, rootfs)
                .map_err(Error::Bounded)?;
            d.bound_by_kernel = true;
        }
    }
    Ok(())
}

fn owned_fd(fd: i32) -> Option<std::fs::File> {
    crate::sys::inherited_fd(fd)
}

/// Sends the shim `message` on the status descriptor.
fn report(status: &mut Option<std::fs::File>, message: &FromGuest) {
    if let Some(s) = status.as_mut() {
        // Nothing else to do if it fails: the shim sees the process end without a report.
        let _ = protocol::send(s, message);
    }
}

/// `containerd-shim-wa8s-v1 precompile BUNDLE DIGEST`: puts the component's compiled form in
/// the node's precompile cache (run by the shim outside the container's cgroup). Reports the
/// outcome on stdout (see `protocol.rs`), exiting 2 if it failed.
pub fn precompile_main(args: &[String]) -> i32 {
    let (Some(bundle), Some(digest)) = (args.first(), args.get(1)) else {
        eprintln!("usage: containerd-shim-wa8s-v1 {PRECOMPILE_SUBCOMMAND} BUNDLE DIGEST");
        return EXIT_STARTUP;
    };
    // Its stderr is relayed into the shim's log.
    log_to_container();
    // A cache hit only checks the record; the guest is the one that loads the code.
    let warmed = || -> Result<(), Error> {
        let spec = ContainerSpec::load(Path::new(bundle))?;
        let c = Cached::open(spec, digest, &NodeConfig::load()?)?;
        c.precompiled.ensure(&c.engine, &c.component)?;
        Ok(())
    };
    let (outcome, code) = match warmed() {
        Ok(()) => (FromPrecompile::Compiled, 0),
        Err(e) => (
            FromPrecompile::Failed {
                error: Failure::of(&e),
            },
            EXIT_STARTUP,
        ),
    };
    // Nothing else to do if it fails: the shim sees the process end without a report.
    let _ = protocol::send(&mut std::io::stdout().lock(), &outcome);
    code
}

/// What the precompile process and the guest both need: the spec, the component in the
/// blob cache, the engine and the precompile cache.
struct Cached {
    spec: ContainerSpec,
    component: VerifiedBlob,
    engine: HostEngine,
    precompiled: PrecompileCache,
}

impl Cached {
    fn open(spec: ContainerSpec, digest: &str, node: &NodeConfig) -> Result<Self, Error> {
        // Found, not read: the cache verified it when the shim stored it, and the guest never
        // reads it when the precompiled artifact is recorded.
        let component = node
            .blobs()?
            .verified(digest)?
            .ok_or_else(|| Error::NotCached(digest.to_owned()))?;
        // The same engine configuration in the precompile process and the guest, so the
        // cache entry one writes is the one the other reads.
        let engine = HostEngine::new(&EngineConfig {
            pooled_instances: Some(spec.policy.limits.max_concurrent_requests.clamp(1, 1000)),
            ..EngineConfig::default()
        })?;
        let precompiled = PrecompileCache::new(node.precompiled_dir())?;
        Ok(Cached {
            spec,
            component,
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
) -> Result<Option<(ContainerSpec, Program)>, Error> {
    let c = Cached::open(spec, digest, node)?;
    let program = c.precompiled.load_recorded(&c.engine, &c.component)?;
    Ok(program.map(|p| (c.spec, p)))
}

/// The grants of the pod contract; every error is a sentence for the user.
fn grants(spec: &ContainerSpec, nodes: NodeAddresses, node: &NodeConfig) -> Result<Grants, Error> {
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
        let volume = spec
            .mounts
            .get(&fs.path)
            .ok_or_else(|| Error::NoVolume(fs.path.clone()))?;
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
    grants.network = NetworkPolicy::new(&policy.allowed_hosts, nodes)?;
    if let Some(ca) = &node.guest_ca_file {
        let pem = std::fs::read(ca).map_err(io(format!("guestCaFile {}", ca.display())))?;
        grants.trust = TrustRoots::with_extra_pem(&ca.display().to_string(), &pem)?;
    }
    grants.limits.memory_bytes = policy.limits.memory_bytes;
    grants.limits.timeout = Some(Duration::from_millis(policy.limits.request_timeout_ms));
    grants.limits.max_concurrent_requests = policy.limits.max_concurrent_requests as usize;
    grants.validate()?;
    Ok(grants)
}

/// Serves (an HTTP component, bound at create) or runs the program to completion.
async fn run(
    program: Program,
    grants: Grants,
    server: Option<Server>,
    metrics: Option<std::net::TcpListener>,
) -> i32 {
    if let Some(listener) = metrics {
        let telemetry = grants.telemetry.clone();
        tokio::spawn(async move {
            // Served until the process ends (after the drain, so the last counts are seen).
            if let Err(e) =
                wa8s_host::serve_metrics(listener, telemetry, std::future::pending()).await
            {
                tracing::warn!("the metrics port stopped: {}", wa8s_api::report::report(&e));
            }
        });
    }
    match server {
        Some(server) => match server.run(terminated()).await {
            Ok(()) => {
                grants.telemetry.flush(Duration::from_secs(2));
                0
            }
            Err(e) => {
                eprintln!("wa8s: {}", wa8s_api::report::report(&e));
                1
            }
        },
        None => {
            // A command runs to completion; SIGTERM ends it like any process.
            tokio::select! {
                status = program.run(&grants) => match status {
                    Ok(s) => s.code(),
                    Err(e) => {
                        eprintln!("wa8s: {}", wa8s_api::report::report(&e));
                        match e {
                            wa8s_host::Error::Deadline(_) => 124,
                            e if e.is_trap() => 134,
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
