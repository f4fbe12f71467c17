//! Launching an app container's guest: obtain the component, create the cgroup, fork the
//! guest process and wait until it is ready to start (compiling the component first, in a
//! process of its own, when the node's precompile cache has no artifact for it).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_shim::asynchronous::util::mount_rootfs;
use containerd_shim::protos::types::mount::Mount;
use wa8s_api::contract::POLICY_ANNOTATION;
use wa8s_host::NodeAddresses;

use crate::cgroup::Cgroup;
use crate::component::{self, NodeConfig};
use crate::containers::{Containers, Resources, Stdio};
use crate::content::ContentStore;
use crate::error::Error;
use crate::protocol::{self, FromGuest, FromPrecompile};
use crate::spec::ContainerSpec;
use crate::sys::{self, Confinement};

/// How long a guest process gets to load its component and report.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What an app container is created from.
pub struct Request<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub stdio: &'a Stdio,
    /// The root filesystem's mounts (none: the bundle's `rootfs` is used as it is).
    pub rootfs: &'a [Mount],
    pub spec: ContainerSpec,
}

/// A guest ready to start.
pub struct Launched {
    pub pid: u32,
    /// Write end of its start pipe.
    pub start: std::fs::File,
    pub resources: Resources,
}

/// What a freshly forked guest process reported.
enum Spawned {
    Ready(u32, std::fs::File),
    Uncompiled(u32),
}

/// Launches an app container's guest. On failure nothing is left behind.
pub async fn launch(
    mut req: Request<'_>,
    containers: &Containers,
    content: Option<&ContentStore>,
) -> Result<Launched, Error> {
    let spec = &req.spec;
    if spec.sandbox_id.is_some() && !spec.annotations.contains_key(POLICY_ANNOTATION) {
        // Fail closed, but say why: a CRI container without the policy usually means
        // containerd was not told to pass it (`pod_annotations` on the runtime).
        tracing::warn!(
            "container {}: no {POLICY_ANNOTATION} annotation, so the component runs with no grants; \
             if its pod has one, add pod_annotations = [\"{POLICY_ANNOTATION}\"] to the wa8s runtime in containerd's configuration",
            req.id
        );
    }
    req.spec.netns = container_netns(&req.spec, containers)?;
    let mut resources = Resources::default();
    let launched = async {
        let rootfs = req.spec.rootfs(req.bundle);
        if !req.rootfs.is_empty() {
            std::fs::create_dir_all(&rootfs).map_err(Error::io("creating the rootfs directory"))?;
            for m in req.rootfs {
                mount_rootfs(m, &rootfs)
                    .await
                    .map_err(|e| Error::Setup(format!("mounting the root filesystem: {e}")))?;
            }
            resources.rootfs = Some(rootfs.clone());
        }
        start_guest(&req, &rootfs, &mut resources, containers, content).await
    }
    .await;
    match launched {
        Ok((pid, start)) => Ok(Launched {
            pid,
            start,
            resources,
        }),
        Err(e) => {
            resources.release();
            Err(e)
        }
    }
}

/// The network namespace a container's guest serves in. The CRI points an app
/// container at its sandbox's namespace through the sandbox's PID — for this shim that is
/// the shim itself, which sits in the host's namespace — so the sandbox's own namespace
/// (recorded at its create) is used instead. Never silently the host's.
fn container_netns(
    spec: &ContainerSpec,
    containers: &Containers,
) -> Result<Option<PathBuf>, Error> {
    let ours = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
    if spec.netns.as_deref() != Some(ours.as_path()) {
        return Ok(spec.netns.clone());
    }
    match spec
        .sandbox_id
        .as_deref()
        .and_then(|id| containers.sandbox_netns(id))
    {
        Some(netns) => Ok(netns),
        None => Err(Error::Setup(format!(
            "the container joins the network namespace of sandbox {}, which this shim does not run",
            spec.sandbox_id.as_deref().unwrap_or("(none named)")
        ))),
    }
}

/// Obtains the component, creates the cgroup and forks the guest process until one is
/// ready; returns its pid and start pipe.
async fn start_guest(
    req: &Request<'_>,
    rootfs: &Path,
    resources: &mut Resources,
    containers: &Containers,
    content: Option<&ContentStore>,
) -> Result<(u32, std::fs::File), Error> {
    let spec = &req.spec;
    let began = Instant::now();
    let node = NodeConfig::load()?;
    let blobs = node.blobs()?;
    let component = component::obtain(req.id, spec, rootfs, &node, &blobs, content).await?;
    let digest = component.digest();
    let obtained = began.elapsed();
    if let Some(path) = &spec.cgroups_path {
        resources.cgroup = Some(Cgroup::create(path, &spec.limits)?);
    }
    // Opened once for every guest this create forks: a FIFO's reader sees end-of-file
    // when its last writer closes, so a guest given up must not be the only one.
    let stdio = GuestStdio::open(req.stdio)?;
    let guest = Guest {
        bundle: req.bundle,
        spec,
        digest,
        cgroup: resources.cgroup.as_ref(),
        stdio: &stdio,
    };
    // The guest loads the precompiled artifact when the node has one (the common case);
    // only when it says there is none is the component compiled, and a new guest started.
    let mut compiled = false;
    loop {
        match guest.spawn(containers, compiled).await? {
            Spawned::Ready(pid, start) => {
                // Where a start's time goes, for whoever chases it (containerd's debug log).
                tracing::debug!(
                    "container {}: component obtained in {obtained:.1?}, guest ready ({}) after {:.1?}",
                    req.id,
                    if compiled {
                        "compiled now"
                    } else {
                        "precompiled"
                    },
                    began.elapsed()
                );
                return Ok((pid, start));
            }
            Spawned::Uncompiled(pid) => {
                containers.discard(pid);
                if compiled {
                    return Err(Error::StillUncompiled(digest.to_owned()));
                }
                precompile(req.bundle, digest).await?;
                compiled = true;
            }
        }
    }
}

/// Compiles the component into the node's precompile cache in a short-lived process
/// outside the container's cgroup: compiling takes far more memory than running (hundreds of
/// MiB for an interpreter-sized component), and neither the pod's limit nor this long-lived
/// shim should carry that peak.
async fn precompile(bundle: &Path, digest: &str) -> Result<(), Error> {
    let exe = std::env::current_exe().map_err(Error::io("finding the shim binary"))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg(protocol::PRECOMPILE_SUBCOMMAND)
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
    // pipe, which ends when the process does. Its log lines (warnings: the process logs at
    // its default level) join the shim's, which containerd keeps.
    let outcome = async {
        let mut out = String::new();
        if let Some(mut o) = child.stdout.take() {
            use tokio::io::AsyncReadExt;
            let _ = o.read_to_string(&mut out).await;
        }
        out
    };
    let relay = async {
        if let Some(e) = child.stderr.take() {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(e).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(digest, "precompile: {line}");
            }
        }
    };
    let (out, ()) = tokio::join!(outcome, relay);
    drop(child);
    match protocol::receive::<FromPrecompile>(&out) {
        Ok(FromPrecompile::Compiled) => Ok(()),
        Ok(FromPrecompile::Failed { error }) => Err(Error::Precompile(error)),
        Err(protocol::Error::Silent { .. }) => Err(Error::PrecompileKilled),
        Err(e) => Err(e.into()),
    }
}

/// One container's guest, to fork (again, after compiling).
struct Guest<'a> {
    bundle: &'a Path,
    spec: &'a ContainerSpec,
    digest: &'a str,
    cgroup: Option<&'a Cgroup>,
    stdio: &'a GuestStdio,
}

impl Guest<'_> {
    /// Forks the guest process (in the container's cgroup and network namespace), which
    /// reports when it is ready to start, that the component is not compiled yet, or why it
    /// cannot run.
    async fn spawn(&self, containers: &Containers, compiled_now: bool) -> Result<Spawned, Error> {
        let netns = match &self.spec.netns {
            Some(p) => Some(OwnedFd::from(
                std::fs::File::open(p).map_err(Error::io(format!("opening {}", p.display())))?,
            )),
            None => None,
        };
        let (start_read, start_write) = std::io::pipe().map_err(Error::io("creating a pipe"))?;
        let (status_read, status_write) = std::io::pipe().map_err(Error::io("creating a pipe"))?;
        let exe = std::env::current_exe().map_err(Error::io("finding the shim binary"))?;
        let (stdout, stderr) = self.stdio.for_guest()?;
        let mut env = Vec::new();
        if let Ok(v) = std::env::var("WA8S_SHIM_CONFIG") {
            env.push(("WA8S_SHIM_CONFIG".to_owned(), v));
        }
        // The runtime's own settings from the container's env (its log filter and format).
        env.extend(
            self.spec
                .env
                .iter()
                .filter(|(k, _)| wa8s_api::contract::is_host_env(k))
                .cloned(),
        );
        // Opened here, in the node's network namespace; the guest runs in the pod's and reads
        // the node's addresses through it.
        let node_netlink =
            NodeAddresses::open_netlink().map_err(Error::io("opening a route-netlink socket"))?;
        let exec = sys::Exec {
            program: exe,
            args: [
                protocol::GUEST_SUBCOMMAND.into(),
                self.bundle.as_os_str().to_owned(),
                self.digest.into(),
            ]
            .into_iter()
            .chain(compiled_now.then(|| protocol::COMPILED_NOW_ARG.into()))
            .collect(),
            env,
            cwd: self.bundle.to_path_buf(),
            stdout,
            stderr,
        };
        let confinement = Confinement {
            cgroup_procs: self
                .cgroup
                .map(|c| c.procs_files())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| {
                    std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).ok()
                })
                .collect(),
            netns,
            fds: vec![
                (OwnedFd::from(start_read), protocol::START_FD),
                (OwnedFd::from(status_write), protocol::STATUS_FD),
                (node_netlink, protocol::NODE_NETLINK_FD),
            ],
        };
        // The library's reaper collects the exit; nothing here waits on the child.
        let pid = sys::spawn(&exec, confinement, self.cgroup.and_then(Cgroup::v2_dir))
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
        let Ok(Ok(text)) = report else {
            containers.discard(pid);
            return Err(Error::NotReady(READY_TIMEOUT));
        };
        let why = match protocol::receive::<FromGuest>(&text) {
            Ok(FromGuest::Ready) => {
                return Ok(Spawned::Ready(
                    pid,
                    std::fs::File::from(OwnedFd::from(start_write)),
                ));
            }
            Ok(FromGuest::Uncompiled) => return Ok(Spawned::Uncompiled(pid)),
            Ok(FromGuest::Failed { error }) => Error::Guest(error),
            // Nothing said: the process died before it could.
            Err(protocol::Error::Silent { .. }) => match self.cgroup.map(Cgroup::stats) {
                Some(s) if s.oom_kills > 0 => Error::GuestOutOfMemory {
                    limit: s.memory_limit,
                },
                _ => Error::GuestExited,
            },
            Err(e) => e.into(),
        };
        containers.discard(pid);
        Err(why)
    }
}

/// A container's stdout and stderr FIFOs (`None`: containerd gave none), open for writing.
struct GuestStdio {
    out: Option<std::fs::File>,
    err: Option<std::fs::File>,
}

impl GuestStdio {
    fn open(stdio: &Stdio) -> Result<Self, Error> {
        Ok(GuestStdio {
            out: open_fifo(&stdio.stdout)?,
            err: open_fifo(&stdio.stderr)?,
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
