//! The containerd task service: one shim process per pod (containers grouped by sandbox id),
//! one guest process per application container, nothing but bookkeeping for the sandbox.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::monitor::monitor_subscribe;
use containerd_shim::asynchronous::util::mount_rootfs;
use containerd_shim::asynchronous::{ExitSignal, Shim, spawn};
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim::protos::api;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageDyn, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{
    Config, Context, DeleteResponse, Flags, StartOpts, TtrpcContext, TtrpcResult,
};
use tokio::sync::{Mutex, watch};
use wa8s_host::NodeAddresses;

use crate::cgroup::Cgroup;
use crate::component::{self, NodeConfig};
use crate::content::ContentStore;
use crate::error::Error;
use crate::guest;
use crate::spec::{ContainerSpec, Kind};
use crate::sys::{self, Confinement};
use wa8s_api::contract::POLICY_ANNOTATION;

/// How long a guest process gets to load its component and report.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Exit status and time.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Exited {
    code: u32,
    at: std::time::SystemTime,
}

#[derive(Debug)]
enum Phase {
    Created,
    Running,
    Stopped(Exited),
}

#[derive(Debug)]
struct Container {
    id: String,
    bundle: PathBuf,
    kind: Kind,
    stdin: String,
    stdout: String,
    stderr: String,
    /// The guest process (app containers).
    pid: Option<u32>,
    /// Write end of the guest's start pipe.
    start: Option<std::fs::File>,
    cgroup: Option<Cgroup>,
    rootfs_mounted: Option<PathBuf>,
    phase: Phase,
    exited: watch::Sender<Option<Exited>>,
}

/// The shim and its task service.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    /// This shim server's socket (`unix:///run/containerd/s/<hash>`), removed at exit: the
    /// library looks for it in the bundle, which containerd has deleted by then.
    socket: String,
    exit: Arc<ExitSignal>,
    containers: Mutex<HashMap<String, Container>>,
    /// Exits of processes no container has (yet).
    unclaimed: Mutex<Unclaimed>,
    publisher: Mutex<Option<RemotePublisher>>,
    /// Each sandbox's network namespace (`None`: the host's, for `hostNetwork` pods).
    sandbox_netns: Mutex<HashMap<String, Option<PathBuf>>>,
    /// containerd's API (content store), where images the kubelet pulled are read from.
    containerd: Option<ContentStore>,
}

/// Exits of processes no container has: guests that exited before their pid was recorded,
/// and guests that were given up (their exit, whenever it comes, is nobody's, and must not be
/// mistaken for that of a later process given the same pid). One lock for both.
#[derive(Default)]
struct Unclaimed {
    early: HashMap<u32, Exited>,
    discarded: std::collections::HashSet<u32>,
}

/// What a freshly forked guest process reported.
enum Spawned {
    Ready(u32),
    /// The node's precompile cache holds no recorded artifact for the component.
    Uncompiled(u32),
}

fn now() -> Timestamp {
    let at = std::time::SystemTime::now();
    timestamp(at)
}

fn timestamp(at: std::time::SystemTime) -> Timestamp {
    let d = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    t.nanos = i32::try_from(d.subsec_nanos()).unwrap_or(0);
    t
}

impl Service {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let publisher = self.inner.publisher.lock().await;
        if let Some(p) = publisher.as_ref()
            && let Err(e) = p
                .publish(Context::default(), topic, &self.inner.namespace, event)
                .await
        {
            log::warn!("publishing {topic}: {e}");
        }
    }

    /// Records a process exit and tells containerd.
    async fn exited(&self, pid: u32, code: i32) {
        let exited = Exited {
            code: u32::try_from(code).unwrap_or(255),
            at: std::time::SystemTime::now(),
        };
        let mut event = None;
        {
            let mut containers = self.inner.containers.lock().await;
            match containers.values_mut().find(|c| c.pid == Some(pid)) {
                Some(c) => {
                    c.phase = Phase::Stopped(exited);
                    c.start = None;
                    // send_replace stores the exit even when no Wait is listening yet (send
                    // would drop it, and a later Wait would block forever).
                    c.exited.send_replace(Some(exited));
                    let oom = c.cgroup.as_ref().is_some_and(|cg| cg.stats().oom_kills > 0);
                    event = Some((c.id.clone(), oom));
                }
                None => {
                    let mut unclaimed = self.inner.unclaimed.lock().await;
                    if !unclaimed.discarded.remove(&pid) {
                        unclaimed.early.insert(pid, exited);
                    }
                }
            }
        }
        if let Some((id, oom)) = event {
            if oom {
                let mut e = TaskOOM::new();
                e.container_id = id.clone();
                self.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(e))
                    .await;
            }
            let mut e = TaskExit::new();
            e.container_id = id.clone();
            e.id = id;
            e.pid = pid;
            e.exit_status = exited.code;
            e.exited_at = MessageField::some(timestamp(exited.at));
            self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(e))
                .await;
        }
    }

    /// Gives up guest process `pid` (killed unless it has already exited).
    async fn discard(&self, pid: u32) {
        let mut unclaimed = self.inner.unclaimed.lock().await;
        if unclaimed.early.remove(&pid).is_none() {
            let _ = sys::kill(pid, libc::SIGKILL);
            unclaimed.discarded.insert(pid);
        }
    }

    /// Compiles the component into the node's precompile cache in a short-lived process
    /// outside the container's cgroup: compiling takes far more memory than running (hundreds of
    /// MiB for an interpreter-sized component), and neither the pod's limit nor this long-lived
    /// shim should carry that peak.
    async fn precompile(bundle: &Path, digest: &str) -> Result<(), Error> {
        let exe = std::env::current_exe().map_err(Error::io("finding the shim binary"))?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg(guest::PRECOMPILE_SUBCOMMAND)
            .arg(bundle)
            .arg(digest)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Ok(v) = std::env::var("WA8S_SHIM_CONFIG") {
            cmd.env("WA8S_SHIM_CONFIG", v);
        }
        let mut child = cmd
            .spawn()
            .map_err(Error::io("starting the precompile process"))?;
        // The library's reaper collects every child's exit, so the outcome comes through the
        // pipes: "ok" on stdout, else the reason on stderr. Both end when the process does.
        let (mut out, mut err) = (String::new(), String::new());
        if let (Some(mut o), Some(mut e)) = (child.stdout.take(), child.stderr.take()) {
            use tokio::io::AsyncReadExt;
            let _ = tokio::join!(o.read_to_string(&mut out), e.read_to_string(&mut err));
        }
        drop(child);
        if out.trim() == "ok" {
            return Ok(());
        }
        let why = err.trim().trim_start_matches("wa8s: ");
        Err(Error::Guest(if why.is_empty() {
            "compiling the component failed: the process was killed".to_owned()
        } else {
            why.to_owned()
        }))
    }

    /// Follows exits the library's reaper reports.
    fn watch_exits(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            let Ok(mut sub) = monitor_subscribe(Topic::Pid).await else {
                log::error!("cannot follow process exits");
                return;
            };
            while let Some(e) = sub.rx.recv().await {
                if let Subject::Pid(pid) = e.subject
                    && let Ok(pid) = u32::try_from(pid)
                {
                    me.exited(pid, e.exit_code).await;
                }
            }
        });
    }

    async fn create_container(&self, req: &api::CreateTaskRequest) -> Result<u32, Error> {
        let bundle = PathBuf::from(&req.bundle);
        let mut spec = ContainerSpec::load(&bundle)?;
        if spec.kind == Kind::App
            && spec.sandbox_id.is_some()
            && !spec.annotations.contains_key(POLICY_ANNOTATION)
        {
            // Fail closed, but say why: a CRI container without the policy usually means
            // containerd was not told to pass it (`pod_annotations` on the runtime).
            log::warn!(
                "container {}: no {POLICY_ANNOTATION} annotation, so the component runs with no grants; \
                 if its pod has one, add pod_annotations = [\"{POLICY_ANNOTATION}\"] to the wa8s runtime in containerd's configuration",
                req.id
            );
        }
        let (tx, _) = watch::channel(None);
        let mut container = Container {
            id: req.id.clone(),
            bundle: bundle.clone(),
            kind: spec.kind,
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            pid: None,
            start: None,
            cgroup: None,
            rootfs_mounted: None,
            phase: Phase::Created,
            exited: tx,
        };
        if spec.kind == Kind::Sandbox {
            // The pause container: the CRI's network namespace already exists; nothing to run.
            self.inner
                .sandbox_netns
                .lock()
                .await
                .insert(req.id.clone(), spec.netns.clone());
            self.inner
                .containers
                .lock()
                .await
                .insert(req.id.clone(), container);
            return Ok(std::process::id());
        }
        spec.netns = self.container_netns(&spec).await?;
        let rootfs = spec.rootfs(&bundle);
        if !req.rootfs.is_empty() {
            std::fs::create_dir_all(&rootfs).map_err(Error::io("creating the rootfs directory"))?;
            for m in &req.rootfs {
                mount_rootfs(m, &rootfs)
                    .await
                    .map_err(|e| Error::Setup(format!("mounting the root filesystem: {e}")))?;
            }
            container.rootfs_mounted = Some(rootfs.clone());
        }
        let result = self.start_guest(&spec, &mut container, &rootfs).await;
        match result {
            Ok(pid) => {
                self.inner
                    .containers
                    .lock()
                    .await
                    .insert(req.id.clone(), container);
                Ok(pid)
            }
            Err(e) => {
                cleanup(&container);
                Err(e)
            }
        }
    }

    /// The network namespace a container's guest serves in. The CRI points an app
    /// container at its sandbox's namespace through the sandbox's PID — for this shim that is
    /// the shim itself, which sits in the host's namespace — so the sandbox's own namespace
    /// (recorded at its create) is used instead. Never silently the host's.
    async fn container_netns(&self, spec: &ContainerSpec) -> Result<Option<PathBuf>, Error> {
        let ours = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
        if spec.netns.as_deref() != Some(ours.as_path()) {
            return Ok(spec.netns.clone());
        }
        let sandboxes = self.inner.sandbox_netns.lock().await;
        match spec.sandbox_id.as_ref().and_then(|id| sandboxes.get(id)) {
            Some(netns) => Ok(netns.clone()),
            None => Err(Error::Setup(format!(
                "the container joins the network namespace of sandbox {}, which this shim does not run",
                spec.sandbox_id.as_deref().unwrap_or("(none named)")
            ))),
        }
    }

    /// Obtains the component, creates the cgroup and forks the guest process, which reports
    /// when it is ready to start (or why it cannot run).
    async fn start_guest(
        &self,
        spec: &ContainerSpec,
        container: &mut Container,
        rootfs: &Path,
    ) -> Result<u32, Error> {
        let began = std::time::Instant::now();
        let node = NodeConfig::load()?;
        let blobs = node.blobs()?;
        let digest = component::obtain(
            &container.id,
            spec,
            rootfs,
            &node,
            &blobs,
            self.inner.containerd.as_ref(),
        )
        .await?;
        let obtained = began.elapsed();
        if let Some(path) = &spec.cgroups_path {
            container.cgroup = Some(Cgroup::create(path, &spec.limits)?);
        }
        // Opened once for every guest this create forks: a FIFO's reader sees end-of-file
        // when its last writer closes, so a guest given up must not be the only one.
        let stdio = GuestStdio::open(container)?;
        // The guest loads the precompiled artifact when the node has one (the common case);
        // only when it says there is none is the component compiled, and a new guest started.
        let mut compiled = false;
        loop {
            match self.spawn_guest(spec, container, &digest, &stdio).await? {
                Spawned::Ready(pid) => {
                    // Where a start's time goes, for whoever chases it (containerd's debug log).
                    log::debug!(
                        "container {}: component obtained in {obtained:.1?}, guest ready ({}) after {:.1?}",
                        container.id,
                        if compiled {
                            "compiled now"
                        } else {
                            "precompiled"
                        },
                        began.elapsed()
                    );
                    return Ok(pid);
                }
                Spawned::Uncompiled(pid) => {
                    self.discard(pid).await;
                    if compiled {
                        return Err(Error::Guest(format!(
                            "the node's precompile cache does not hold {digest} right after compiling it"
                        )));
                    }
                    Self::precompile(&container.bundle, &digest).await?;
                    compiled = true;
                }
            }
        }
    }

    /// Forks the guest process (in the container's cgroup and network namespace), which
    /// reports when it is ready to start, that the component is not compiled yet, or why it
    /// cannot run.
    async fn spawn_guest(
        &self,
        spec: &ContainerSpec,
        container: &mut Container,
        digest: &str,
        stdio: &GuestStdio,
    ) -> Result<Spawned, Error> {
        let netns = match &spec.netns {
            Some(p) => Some(OwnedFd::from(
                std::fs::File::open(p).map_err(Error::io(format!("opening {}", p.display())))?,
            )),
            None => None,
        };
        let (start_read, start_write) = std::io::pipe().map_err(Error::io("creating a pipe"))?;
        let (status_read, status_write) = std::io::pipe().map_err(Error::io("creating a pipe"))?;
        let exe = std::env::current_exe().map_err(Error::io("finding the shim binary"))?;
        let (stdout, stderr) = stdio.for_guest()?;
        let mut env = Vec::new();
        if let Ok(v) = std::env::var("WA8S_SHIM_CONFIG") {
            env.push(("WA8S_SHIM_CONFIG".to_owned(), v));
        }
        // Opened here, in the node's network namespace; the guest runs in the pod's and reads
        // the node's addresses through it.
        let node_netlink =
            NodeAddresses::open_netlink().map_err(Error::io("opening a route-netlink socket"))?;
        let exec = sys::Exec {
            program: exe,
            args: vec![
                guest::SUBCOMMAND.into(),
                container.bundle.clone().into_os_string(),
                digest.into(),
            ],
            env,
            cwd: container.bundle.clone(),
            stdout,
            stderr,
        };
        let cgroup = container.cgroup.as_ref();
        let confinement = Confinement {
            cgroup_procs: cgroup
                .map(|c| c.procs_files())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| {
                    std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).ok()
                })
                .collect(),
            netns,
            fds: vec![
                (OwnedFd::from(start_read), guest::START_FD),
                (OwnedFd::from(status_write), guest::STATUS_FD),
                (node_netlink, guest::NODE_NETLINK_FD),
            ],
        };
        // The library's reaper collects the exit; nothing here waits on the child.
        let pid = sys::spawn(&exec, confinement, cgroup.and_then(Cgroup::v2_dir))
            .map_err(Error::io("starting the guest process"))?;
        let report = tokio::time::timeout(
            READY_TIMEOUT,
            tokio::task::spawn_blocking(move || {
                let mut text = String::new();
                let mut r = status_read;
                let _ = std::io::Read::read_to_string(&mut r, &mut text);
                text
            }),
        )
        .await;
        let text = match report {
            Ok(Ok(text)) => text,
            _ => {
                self.discard(pid).await;
                return Err(Error::Setup(format!(
                    "the guest process did not get ready within {READY_TIMEOUT:?}"
                )));
            }
        };
        match text.trim() {
            "ok" => {
                container.pid = Some(pid);
                container.start = Some(std::fs::File::from(OwnedFd::from(start_write)));
                return Ok(Spawned::Ready(pid));
            }
            guest::UNCOMPILED => return Ok(Spawned::Uncompiled(pid)),
            _ => {}
        }
        self.discard(pid).await;
        let why = text.trim().trim_start_matches("error: ");
        let stats = container.cgroup.as_ref().map(Cgroup::stats);
        Err(Error::Guest(match stats {
            _ if !why.is_empty() => why.to_owned(),
            Some(s) if s.oom_kills > 0 => format!(
                "the guest process ran out of memory while starting (the container's limit is {} bytes)",
                s.memory_limit
            ),
            _ => "the guest process exited before it was ready".into(),
        }))
    }
}

/// A container's stdout and stderr FIFOs (`None`: containerd gave none), open for writing.
struct GuestStdio {
    out: Option<std::fs::File>,
    err: Option<std::fs::File>,
}

impl GuestStdio {
    fn open(c: &Container) -> Result<Self, Error> {
        Ok(GuestStdio {
            out: open_fifo(&c.stdout)?,
            err: open_fifo(&c.stderr)?,
        })
    }

    /// Stdout and stderr for one guest (its own descriptors of the same FIFOs).
    fn for_guest(&self) -> Result<(Option<std::fs::File>, Option<std::fs::File>), Error> {
        let share = |f: &Option<std::fs::File>| {
            f.as_ref()
                .map(std::fs::File::try_clone)
                .transpose()
                .map_err(Error::io("sharing a stdio FIFO"))
        };
        Ok((share(&self.out)?, share(&self.err)?))
    }
}

fn open_fifo(path: &str) -> Result<Option<std::fs::File>, Error> {
    if path.is_empty() {
        return Ok(None);
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map(Some)
        .map_err(Error::io(format!("opening {path}")))
}

/// Cgroup usage in the message containerd decodes for the cgroup version it was read from
/// (the CRI's working set is usage minus inactive file pages in both).
fn metrics(
    stats: &crate::cgroup::Stats,
) -> Result<
    containerd_shim::protos::protobuf::well_known_types::any::Any,
    containerd_shim::protos::protobuf::Error,
> {
    let mut any = containerd_shim::protos::protobuf::well_known_types::any::Any::new();
    if stats.v2 {
        use containerd_shim::protos::cgroups_v2::metrics::{
            CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
        };
        let mut m = Metrics::new();
        let mut mem = MemoryStat::new();
        mem.usage = stats.memory_usage;
        mem.usage_limit = stats.memory_limit;
        mem.max_usage = stats.memory_max_usage;
        mem.inactive_file = stats.inactive_file;
        m.memory = MessageField::some(mem);
        let mut events = MemoryEvents::new();
        events.oom_kill = stats.oom_kills;
        m.memory_events = MessageField::some(events);
        let mut cpu = CPUStat::new();
        cpu.usage_usec = stats.cpu_usage_ns / 1000;
        cpu.user_usec = stats.cpu_user_ns / 1000;
        cpu.system_usec = stats.cpu_system_ns / 1000;
        m.cpu = MessageField::some(cpu);
        let mut pids = PidsStat::new();
        pids.current = stats.pids;
        m.pids = MessageField::some(pids);
        any.type_url = "io.containerd.cgroups.v2.Metrics".into();
        any.value = m.write_to_bytes()?;
        return Ok(any);
    }
    use containerd_shim::protos::cgroups::metrics::{
        CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
    };
    let mut m = Metrics::new();
    let mut mem = MemoryStat::new();
    let mut usage = MemoryEntry::new();
    usage.usage = stats.memory_usage;
    usage.limit = stats.memory_limit;
    usage.max = stats.memory_max_usage;
    mem.usage = MessageField::some(usage);
    mem.rss = stats.memory_usage.saturating_sub(stats.inactive_file);
    mem.total_inactive_file = stats.inactive_file;
    m.memory = MessageField::some(mem);
    let mut cpu = CPUStat::new();
    let mut cu = CPUUsage::new();
    cu.total = stats.cpu_usage_ns;
    cu.user = stats.cpu_user_ns;
    cu.kernel = stats.cpu_system_ns;
    cpu.usage = MessageField::some(cu);
    m.cpu = MessageField::some(cpu);
    let mut pids = PidsStat::new();
    pids.current = stats.pids;
    m.pids = MessageField::some(pids);
    any.type_url = "io.containerd.cgroups.v1.Metrics".into();
    any.value = m.write_to_bytes()?;
    Ok(any)
}

/// Undoes what create did: rootfs mount and cgroup.
fn cleanup(c: &Container) {
    if let Some(rootfs) = &c.rootfs_mounted
        && let Err(e) = containerd_shim::mount::umount_recursive(rootfs.to_str(), 0)
    {
        log::warn!("unmounting {}: {e}", rootfs.display());
    }
    if let Some(cg) = &c.cgroup
        && let Err(e) = cg.remove()
    {
        log::warn!("removing the cgroup: {e}");
    }
}

#[async_trait]
impl Shim for Service {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            inner: Arc::new(Inner {
                namespace: args.namespace.clone(),
                socket: args.socket.clone(),
                exit: Arc::new(ExitSignal::default()),
                containers: Mutex::new(HashMap::new()),
                unclaimed: Mutex::new(Unclaimed::default()),
                publisher: Mutex::new(None),
                sandbox_netns: Mutex::new(HashMap::new()),
                containerd: match ContentStore::new(&args.address, &args.namespace) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        log::warn!("{e}; components will be pulled from their registries");
                        None
                    }
                },
            }),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        // One shim per pod: containers of a sandbox share its socket (containerd calls
        // `start` in the container's bundle directory).
        let grouping = ContainerSpec::load(Path::new("."))
            .ok()
            .and_then(|s| s.sandbox_id)
            .unwrap_or_else(|| opts.id.clone());
        spawn(opts, &grouping, Vec::new()).await
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let mut resp = DeleteResponse::new();
        resp.exited_at = MessageField::some(now());
        resp.exit_status = 137;
        Ok(resp)
    }

    async fn wait(&mut self) {
        self.inner.exit.wait().await;
        let path = self.inner.socket.trim_start_matches("unix://");
        if !path.is_empty() {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        *self.inner.publisher.lock().await = Some(publisher);
        self.watch_exits();
        self.clone()
    }
}

fn ttrpc(e: Error) -> containerd_shim::protos::ttrpc::Error {
    e.into_ttrpc()
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if self.inner.containers.lock().await.contains_key(&req.id) {
            return Err(ttrpc(Error::AlreadyExists(req.id.clone())));
        }
        let pid = self.create_container(&req).await.map_err(ttrpc)?;
        let mut event = TaskCreate::new();
        event.container_id = req.id.clone();
        event.bundle = req.bundle.clone();
        event.rootfs = req.rootfs.clone();
        let mut io = TaskIO::new();
        io.stdin = req.stdin.clone();
        io.stdout = req.stdout.clone();
        io.stderr = req.stderr.clone();
        io.terminal = req.terminal;
        event.io = MessageField::some(io);
        event.pid = pid;
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event))
            .await;
        let mut resp = api::CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = {
            let mut containers = self.inner.containers.lock().await;
            let c = containers
                .get_mut(&req.id)
                .ok_or_else(|| ttrpc(Error::NotFound(req.id.clone())))?;
            if !matches!(c.phase, Phase::Created) {
                return Err(ttrpc(Error::Precondition(format!(
                    "container {} is not in the created state",
                    req.id
                ))));
            }
            match c.kind {
                Kind::Sandbox => std::process::id(),
                Kind::App => {
                    let pid = c.pid.unwrap_or(0);
                    if let Some(mut start) = c.start.take() {
                        std::io::Write::write_all(&mut start, b"s")
                            .map_err(|e| ttrpc(Error::io("starting the guest")(e)))?;
                    }
                    pid
                }
            }
        };
        // An exit that raced ahead of bookkeeping.
        if let Some(exited) = self.inner.unclaimed.lock().await.early.remove(&pid) {
            self.exited(pid, i32::try_from(exited.code).unwrap_or(255))
                .await;
        }
        {
            let mut containers = self.inner.containers.lock().await;
            if let Some(c) = containers.get_mut(&req.id)
                && matches!(c.phase, Phase::Created)
            {
                c.phase = Phase::Running;
            }
        }
        let mut event = TaskStart::new();
        event.container_id = req.id.clone();
        event.pid = pid;
        self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(event))
            .await;
        let mut resp = api::StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let containers = self.inner.containers.lock().await;
        let c = containers
            .get(&req.id)
            .ok_or_else(|| ttrpc(Error::NotFound(req.id.clone())))?;
        let mut resp = api::StateResponse::new();
        resp.id = c.id.clone();
        resp.bundle = c.bundle.to_string_lossy().into_owned();
        resp.pid = c.pid.unwrap_or_else(std::process::id);
        resp.stdin = c.stdin.clone();
        resp.stdout = c.stdout.clone();
        resp.stderr = c.stderr.clone();
        resp.status = match c.phase {
            Phase::Created => api::Status::CREATED,
            Phase::Running => api::Status::RUNNING,
            Phase::Stopped(_) => api::Status::STOPPED,
        }
        .into();
        if let Phase::Stopped(e) = c.phase {
            resp.exit_status = e.code;
            resp.exited_at = MessageField::some(timestamp(e.at));
        }
        Ok(resp)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let target = {
            let containers = self.inner.containers.lock().await;
            let c = containers
                .get(&req.id)
                .ok_or_else(|| ttrpc(Error::NotFound(req.id.clone())))?;
            match (&c.phase, c.kind, c.pid) {
                (Phase::Stopped(_), _, _) => None,
                (_, Kind::Sandbox, _) => Some(None),
                (_, Kind::App, Some(pid)) => Some(Some(pid)),
                (_, Kind::App, None) => None,
            }
        };
        match target {
            // Already stopped: containerd may kill again; that is not an error.
            None => {}
            Some(None) => {
                // The sandbox has no process: stopping it is bookkeeping.
                let code = 128 + req.signal;
                let mut containers = self.inner.containers.lock().await;
                if let Some(c) = containers.get_mut(&req.id) {
                    let e = Exited {
                        code,
                        at: std::time::SystemTime::now(),
                    };
                    c.phase = Phase::Stopped(e);
                    c.exited.send_replace(Some(e));
                }
                drop(containers);
                let mut e = TaskExit::new();
                e.container_id = req.id.clone();
                e.id = req.id.clone();
                e.pid = std::process::id();
                e.exit_status = code;
                e.exited_at = MessageField::some(now());
                self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(e))
                    .await;
            }
            Some(Some(pid)) => {
                let signal = i32::try_from(req.signal).unwrap_or(libc::SIGKILL);
                match sys::kill(pid, signal) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(ttrpc(Error::io(format!("signalling {pid}"))(e))),
                }
            }
        }
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let mut rx = {
            let containers = self.inner.containers.lock().await;
            let c = containers
                .get(&req.id)
                .ok_or_else(|| ttrpc(Error::NotFound(req.id.clone())))?;
            c.exited.subscribe()
        };
        let exited = loop {
            if let Some(e) = *rx.borrow_and_update() {
                break e;
            }
            if rx.changed().await.is_err() {
                return Err(ttrpc(Error::NotFound(req.id.clone())));
            }
        };
        let mut resp = api::WaitResponse::new();
        resp.exit_status = exited.code;
        resp.exited_at = MessageField::some(timestamp(exited.at));
        Ok(resp)
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let c = {
            let mut containers = self.inner.containers.lock().await;
            let c = containers
                .get(&req.id)
                .ok_or_else(|| ttrpc(Error::NotFound(req.id.clone())))?;
            if matches!(c.phase, Phase::Running) {
                return Err(ttrpc(Error::Precondition(format!(
                    "container {} is still running: kill it first",
                    req.id
                ))));
            }
            let Some(c) = containers.remove(&req.id) else {
                return Err(ttrpc(Error::NotFound(req.id.clone())));
            };
            c
        };
        self.inner.sandbox_netns.lock().await.remove(&req.id);
        // A created-but-never-started guest is waiting on its start pipe; closing it ends
        // the process.
        if let (Phase::Created, Some(pid)) = (&c.phase, c.pid) {
            self.discard(pid).await;
        }
        cleanup(&c);
        let (code, at) = match c.phase {
            Phase::Stopped(e) => (e.code, e.at),
            _ => (137, std::time::SystemTime::now()),
        };
        let pid = c.pid.unwrap_or_else(std::process::id);
        let mut event = TaskDelete::new();
        event.container_id = req.id.clone();
        event.id = req.id.clone();
        event.pid = pid;
        event.exit_status = code;
        event.exited_at = MessageField::some(timestamp(at));
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event))
            .await;
        let mut resp = api::DeleteResponse::new();
        resp.pid = pid;
        resp.exit_status = code;
        resp.exited_at = MessageField::some(timestamp(at));
        Ok(resp)
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let containers = self.inner.containers.lock().await;
        let c = containers
            .get(&req.id)
            .ok_or_else(|| ttrpc(Error::NotFound(req.id.clone())))?;
        let mut resp = api::PidsResponse::new();
        if let (Some(pid), Phase::Running | Phase::Created) = (c.pid, &c.phase) {
            let mut p = containerd_shim::protos::types::task::ProcessInfo::new();
            p.pid = pid;
            resp.processes.push(p);
        }
        Ok(resp)
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let stats = {
            let containers = self.inner.containers.lock().await;
            let c = containers
                .get(&req.id)
                .ok_or_else(|| ttrpc(Error::NotFound(req.id.clone())))?;
            c.cgroup.as_ref().map(Cgroup::stats).unwrap_or_default()
        };
        let any =
            metrics(&stats).map_err(|e| ttrpc(Error::Setup(format!("encoding metrics: {e}"))))?;
        let mut resp = api::StatsResponse::new();
        resp.stats = MessageField::some(any);
        Ok(resp)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let containers = self.inner.containers.lock().await;
        let mut resp = api::ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = containers
            .get(&req.id)
            .and_then(|c| c.pid)
            .unwrap_or_else(std::process::id);
        resp.version = env!("CARGO_PKG_VERSION").into();
        Ok(resp)
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        // containerd asks after each delete; the shim stays while the pod has containers.
        if self.inner.containers.lock().await.is_empty() {
            self.inner.exit.signal();
        }
        Ok(api::Empty::new())
    }
}
