//! The containerd task service: one shim process per pod (containers grouped by sandbox id),
//! one guest process per application container, nothing but bookkeeping for the sandbox.
//! Only the ttrpc calls and the events live here: requests become calls on the container
//! table (`containers.rs`) and the launcher (`launch.rs`), and errors become ttrpc codes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::monitor::monitor_subscribe;
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
use tokio::sync::Mutex;

use crate::containers::{Container, Containers, ExitEvent, Kill, Phase, Stdio};
use crate::content::ContentStore;
use crate::error::Error;
use crate::launch::{self, Launched};
use crate::protocol::{self, ToGuest};
use crate::spec::{ContainerSpec, Kind};
use crate::sys;

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
    containers: Containers,
    publisher: Mutex<Option<RemotePublisher>>,
    /// containerd's API (content store), where images the kubelet pulled are read from.
    containerd: Option<ContentStore>,
}

fn now() -> Timestamp {
    timestamp(std::time::SystemTime::now())
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
            tracing::warn!("publishing {topic}: {e}");
        }
    }

    /// Tells containerd of an exit (and of an OOM kill before it).
    async fn publish_exit(&self, event: ExitEvent) {
        if event.oom {
            let mut e = TaskOOM::new();
            e.container_id = event.id.clone();
            self.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(e))
                .await;
        }
        let mut e = TaskExit::new();
        e.container_id = event.id.clone();
        e.id = event.id;
        e.pid = event.pid;
        e.exit_status = event.exit.code;
        e.exited_at = MessageField::some(timestamp(event.exit.at));
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(e))
            .await;
    }

    /// Follows exits the library's reaper reports.
    fn watch_exits(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            let Ok(mut sub) = monitor_subscribe(Topic::Pid).await else {
                tracing::error!("cannot follow process exits");
                return;
            };
            while let Some(e) = sub.rx.recv().await {
                if let Subject::Pid(pid) = e.subject
                    && let Ok(pid) = u32::try_from(pid)
                {
                    let code = u32::try_from(e.exit_code).unwrap_or(255);
                    if let Some(event) = me.inner.containers.exited(pid, code) {
                        me.publish_exit(event).await;
                    }
                }
            }
        });
    }

    async fn create_container(&self, req: &api::CreateTaskRequest) -> Result<u32, Error> {
        let bundle = PathBuf::from(&req.bundle);
        let spec = ContainerSpec::load(&bundle)?;
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
        };
        let container = match spec.kind {
            // The pause container: the CRI's network namespace already exists; nothing to run.
            Kind::Sandbox => Container::sandbox(req.id.clone(), bundle, stdio, spec.netns),
            Kind::App => {
                let Launched {
                    pid,
                    start,
                    resources,
                } = launch::launch(
                    launch::Request {
                        id: &req.id,
                        bundle: &bundle,
                        stdio: &stdio,
                        rootfs: &req.rootfs,
                        spec,
                    },
                    &self.inner.containers,
                    self.inner.containerd.as_ref(),
                )
                .await?;
                Container::app(req.id.clone(), bundle, stdio, pid, start, resources)
            }
        };
        let pid = container.pid.unwrap_or_else(std::process::id);
        self.inner.containers.insert(container)?;
        Ok(pid)
    }
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

#[async_trait]
impl Shim for Service {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            inner: Arc::new(Inner {
                namespace: args.namespace.clone(),
                socket: args.socket.clone(),
                exit: Arc::new(ExitSignal::default()),
                containers: Containers::default(),
                publisher: Mutex::new(None),
                containerd: match ContentStore::new(&args.address, &args.namespace) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        let why = crate::protocol::Failure::of(&e);
                        tracing::warn!("{why}; components will be pulled from their registries");
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

fn ttrpc(e: impl Into<Error>) -> containerd_shim::protos::ttrpc::Error {
    e.into().into_ttrpc()
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if self.inner.containers.contains(&req.id) {
            return Err(ttrpc(crate::containers::Error::AlreadyExists(
                req.id.clone(),
            )));
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
        let starting = self.inner.containers.start(&req.id).map_err(ttrpc)?;
        let pid = starting.pid;
        if let Some(mut signal) = starting.signal
            && let Err(e) = protocol::send(&mut signal, &ToGuest::Start)
        {
            // The guest is gone (or unreachable): make sure its exit comes, which moves the
            // container on from starting.
            let _ = sys::kill(pid, libc::SIGKILL);
            return Err(ttrpc(Error::io("starting the guest")(e)));
        }
        if let Some(exit) = self.inner.containers.started(&req.id, pid) {
            self.publish_exit(exit).await;
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
        let c = self.inner.containers.state(&req.id).map_err(ttrpc)?;
        let mut resp = api::StateResponse::new();
        resp.id = c.id;
        resp.bundle = c.bundle.to_string_lossy().into_owned();
        resp.pid = c.pid;
        resp.stdin = c.stdio.stdin;
        resp.stdout = c.stdio.stdout;
        resp.stderr = c.stdio.stderr;
        resp.status = match c.phase {
            Phase::Created | Phase::Starting => api::Status::CREATED,
            Phase::Running => api::Status::RUNNING,
            Phase::Exited(_) | Phase::Deleting => api::Status::STOPPED,
        }
        .into();
        if let Some(e) = c.exit {
            resp.exit_status = e.code;
            resp.exited_at = MessageField::some(timestamp(e.at));
        }
        Ok(resp)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        match self
            .inner
            .containers
            .kill(&req.id, req.signal)
            .map_err(ttrpc)?
        {
            Kill::Nothing => {}
            Kill::Stopped(exit) => self.publish_exit(exit).await,
            Kill::Signal(pid) => {
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
        let mut rx = self.inner.containers.wait(&req.id).map_err(ttrpc)?;
        let exited = loop {
            if let Some(e) = *rx.borrow_and_update() {
                break e;
            }
            if rx.changed().await.is_err() {
                return Err(ttrpc(crate::containers::Error::NotFound(req.id.clone())));
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
        let deleted = self.inner.containers.delete(&req.id).map_err(ttrpc)?;
        deleted.resources.release();
        self.inner.containers.remove(&req.id);
        let at = timestamp(deleted.exit.at);
        let mut event = TaskDelete::new();
        event.container_id = req.id.clone();
        event.id = req.id.clone();
        event.pid = deleted.pid;
        event.exit_status = deleted.exit.code;
        event.exited_at = MessageField::some(at.clone());
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event))
            .await;
        let mut resp = api::DeleteResponse::new();
        resp.pid = deleted.pid;
        resp.exit_status = deleted.exit.code;
        resp.exited_at = MessageField::some(at);
        Ok(resp)
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let mut resp = api::PidsResponse::new();
        if let Some(pid) = self.inner.containers.live_pid(&req.id).map_err(ttrpc)? {
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
        let stats = self.inner.containers.stats(&req.id).map_err(ttrpc)?;
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
        let mut resp = api::ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = self
            .inner
            .containers
            .task_pid(&req.id)
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
        if self.inner.containers.is_empty() {
            self.inner.exit.signal();
        }
        Ok(api::Empty::new())
    }
}
