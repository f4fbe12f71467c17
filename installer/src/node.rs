//! Preparing one node: the shim on containerd's PATH, the runtime in containerd's
//! configuration, containerd restarted to read it — and undoing all of that.
//!
//! Node paths are absolute paths *on the node* (`/etc/containerd/config.toml`); they are
//! reached through [`Options::root`], the node's `/` as mounted in the installer's container
//! (`/host` in the chart, `/` when run directly on a node).
//!
//! What installing changed is recorded on the node ([`Options::state_file`]). Uninstall works
//! from that record alone, so it gives back the original bytes even when a newer installer
//! image does the uninstalling, and installing again never mistakes its own earlier edit for
//! the original.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::containerd_config::{self, Change, Installed, Runtime};

/// The shim's file name: containerd derives it from the runtime type `io.containerd.wa8s.v1`.
pub const SHIM_NAME: &str = "containerd-shim-wa8s-v1";
/// Where the shim goes by default: on containerd's `PATH` on every distribution.
pub const DEFAULT_SHIM_DIR: &str = "/usr/local/bin";
/// Where k3s keeps its containerd configuration (and the templates it renders it from).
pub const K3S_CONTAINERD_DIR: &str = "/var/lib/rancher/k3s/agent/etc/containerd";
/// containerd's own configuration file.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// containerd's socket, and k3s's.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
pub const K3S_CONTAINERD_SOCKET: &str = "/run/k3s/containerd/containerd.sock";
/// The drop-in file's name inside an imported `conf.d`.
pub const DROP_IN_NAME: &str = "wa8s.toml";

/// Why a node could not be prepared (or restored). Files are never left half-written: every
/// write is a temporary file renamed into place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] containerd_config::Error),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: the installer's record is unreadable ({reason}); remove it only after restoring containerd's configuration by hand"
    )]
    Record { path: PathBuf, reason: String },
    #[error(
        "cannot tell how to restart containerd on this node (no systemd, not k3s); set a restart command (chart value installer.restart.command)"
    )]
    NoRestartMethod,
    #[error("restarting containerd with `{command}` failed ({status}): {output}")]
    RestartFailed {
        command: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("containerd did not come back on {socket} within {waited:?} after `{command}`")]
    NotBack {
        command: String,
        socket: PathBuf,
        waited: Duration,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { what, path, source }
}

/// How containerd is made to read its new configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// systemd's `containerd` unit, or k3s's unit on a k3s node; else an error.
    Auto,
    /// Do not restart (the configuration takes effect at containerd's next start).
    None,
    /// `systemctl restart <unit>` in the node's root.
    Systemd(String),
    /// `/bin/sh -c <command>` in the node's root.
    Command(String),
}

/// Everything the installer needs to know about the node.
#[derive(Debug, Clone)]
pub struct Options {
    /// The node's `/` as this process sees it.
    pub root: PathBuf,
    /// containerd's configuration (node path); `None`: found as described on [`Layout`].
    pub config: Option<PathBuf>,
    /// Version for a configuration the installer has to create (2 reads on containerd 1.6
    /// to 2.x; 3 on 2.x only).
    pub new_config_version: i64,
    /// The shim binary to install (a path in this process's own filesystem).
    pub shim_source: PathBuf,
    /// The node directory it goes to ([`Options::set_shim_dir`] keeps the runtime's
    /// `runtime_path` in step).
    pub shim_dir: PathBuf,
    pub restart: Restart,
    /// containerd's socket (node path); `None`: containerd's or k3s's by layout.
    pub socket: Option<PathBuf>,
    /// How long containerd may take to come back after a restart.
    pub restart_timeout: Duration,
    /// The record of what was changed (node path).
    pub state_file: PathBuf,
    pub runtime: Runtime,
}

impl Options {
    /// Puts the shim in node directory `dir`; outside [`DEFAULT_SHIM_DIR`] the runtime names
    /// it by its absolute path (`runtime_path`), since containerd finds shims on its `PATH`
    /// and a node with a read-only `/usr/local/bin` keeps writable directories off it.
    pub fn set_shim_dir(&mut self, dir: PathBuf) {
        self.runtime.runtime_path = (dir != Path::new(DEFAULT_SHIM_DIR))
            .then(|| dir.join(SHIM_NAME).to_string_lossy().into_owned());
        self.shim_dir = dir;
    }

    /// Defaults for a node whose `/` is at `root`.
    pub fn new(root: impl Into<PathBuf>, shim_source: impl Into<PathBuf>) -> Self {
        Options {
            root: root.into(),
            config: None,
            new_config_version: 2,
            shim_source: shim_source.into(),
            shim_dir: PathBuf::from(DEFAULT_SHIM_DIR),
            restart: Restart::Auto,
            socket: None,
            restart_timeout: Duration::from_secs(120),
            state_file: PathBuf::from("/var/lib/wa8s/node-installer.json"),
            runtime: Runtime::default(),
        }
    }

    /// A node path as this process reaches it.
    pub fn on_node(&self, node_path: &Path) -> PathBuf {
        self.root
            .join(node_path.strip_prefix("/").unwrap_or(node_path))
    }
}

/// Where the runtime goes on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Into containerd's `config.toml` itself (created if there is none).
    File { path: PathBuf, version: i64 },
    /// Into a file of its own in the directory `config.toml` imports (`conf.d/*.toml`), with
    /// the main file's runc `SystemdCgroup` (the drop-in's runtime copies it).
    DropIn {
        path: PathBuf,
        version: i64,
        systemd_cgroup: Option<bool>,
    },
    /// Into k3s's template (`config-v3.toml.tmpl` or `config.toml.tmpl`), created if needed.
    K3sTemplate { path: PathBuf, version: i64 },
}

impl Layout {
    /// The node path the installer writes.
    pub fn path(&self) -> &Path {
        match self {
            Layout::File { path, .. }
            | Layout::DropIn { path, .. }
            | Layout::K3sTemplate { path, .. } => path,
        }
    }

    fn is_k3s(&self) -> bool {
        matches!(self, Layout::K3sTemplate { .. })
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading", path)(e)),
    }
}

/// Finds the layout: the configured file (a `.tmpl` is a k3s template); else a k3s node's
/// template (the existing one, or the one matching the version k3s renders); else
/// `/etc/containerd/config.toml`, through its drop-in directory when it imports one.
pub fn detect(o: &Options) -> Result<Layout, Error> {
    let k3s_dir = Path::new(K3S_CONTAINERD_DIR);
    let config = match &o.config {
        Some(p) => p.clone(),
        None if o.on_node(k3s_dir).is_dir() => {
            let v3 = k3s_dir.join("config-v3.toml.tmpl");
            let v2 = k3s_dir.join("config.toml.tmpl");
            if o.on_node(&v3).exists() {
                v3
            } else if o.on_node(&v2).exists() {
                v2
            } else {
                // The template must match the version k3s renders (its containerd's).
                let rendered = k3s_dir.join("config.toml");
                match read_optional(&o.on_node(&rendered))? {
                    Some(t)
                        if containerd_config::version(&t, &rendered.to_string_lossy())? == 2 =>
                    {
                        v2
                    }
                    _ => v3,
                }
            }
        }
        None => PathBuf::from(CONTAINERD_CONFIG),
    };
    if containerd_config::is_template(&config) {
        let name = config.file_name().unwrap_or_default().to_string_lossy();
        let version = if name.contains("-v3") { 3 } else { 2 };
        return Ok(Layout::K3sTemplate {
            path: config,
            version,
        });
    }
    let shown = config.to_string_lossy().into_owned();
    match read_optional(&o.on_node(&config))? {
        None => Ok(Layout::File {
            path: config,
            version: o.new_config_version,
        }),
        Some(text) => {
            let version = containerd_config::version(&text, &shown)?;
            match containerd_config::drop_in_dir(&text, &shown)? {
                Some(dir) => Ok(Layout::DropIn {
                    path: config
                        .parent()
                        .unwrap_or(Path::new("/"))
                        .join(dir)
                        .join(DROP_IN_NAME),
                    version,
                    systemd_cgroup: containerd_config::runc_systemd_cgroup(&text, &shown)?,
                }),
                None => Ok(Layout::File {
                    path: config,
                    version,
                }),
            }
        }
    }
}

/// What the installer keeps on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Record {
    /// The configuration file it wrote, with the bytes from before.
    pub config: Installed,
    /// Whether that file is a k3s template (k3s is restarted instead of containerd).
    #[serde(default)]
    pub k3s: bool,
    /// The shim it put on the node (node path).
    pub shim: PathBuf,
    /// The configuration was written but containerd has not been restarted successfully
    /// since: the next run restarts it even though the file is already as wanted.
    #[serde(default)]
    pub restart_pending: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The configuration file written or removed (node path), if any.
    pub config_changed: Option<PathBuf>,
    /// Whether the shim binary was written or removed.
    pub shim_changed: bool,
    /// How containerd was restarted, if it was.
    pub restarted: Option<String>,
}

impl Outcome {
    /// Whether the run changed nothing on the node.
    pub fn is_noop(&self) -> bool {
        self.config_changed.is_none() && !self.shim_changed && self.restarted.is_none()
    }
}

/// What the installer recorded on this node, if it has installed here.
pub fn read_record(o: &Options) -> Result<Option<Record>, Error> {
    let path = o.on_node(&o.state_file);
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Record {
            path: o.state_file.clone(),
            reason: e.to_string(),
        })
}

fn save_record(o: &Options, old: Option<&Record>, new: &Record) -> Result<(), Error> {
    if old == Some(new) {
        return Ok(());
    }
    let json = serde_json::to_string_pretty(new).unwrap_or_default();
    write_atomically(&o.on_node(&o.state_file), json.as_bytes(), 0o600)
}

/// Writes `bytes` to `path` through a temporary file in the same directory, keeping the
/// mode of the file it replaces (else `mode`).
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(mode);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.wa8s-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io("writing", path))
}

fn remove_optional(path: &Path) -> Result<bool, Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("removing", path)(e)),
    }
}

/// Whether two files have the same bytes, read in chunks (the shim is tens of MiB and the
/// installer's memory limit is small).
fn same_contents(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let (Ok(fa), Ok(fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return Ok(false);
    };
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ra, mut rb) = (std::io::BufReader::new(fa), std::io::BufReader::new(fb));
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = ra.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        rb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Copies the shim unless the node already has exactly these bytes: streamed to a temporary
/// file beside the target, then renamed over it (a running shim keeps its unlinked binary).
fn install_shim(o: &Options) -> Result<(PathBuf, bool), Error> {
    let node_path = o.shim_dir.join(SHIM_NAME);
    let target = o.on_node(&node_path);
    let same = same_contents(&o.shim_source, &target).map_err(io("comparing", &target))?;
    if !same {
        let dir = target.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let tmp = dir.join(format!(".{SHIM_NAME}.wa8s-{}", std::process::id()));
        let result = (|| {
            let mut from = std::fs::File::open(&o.shim_source)?;
            let mut to = std::fs::File::create(&tmp)?;
            std::io::copy(&mut from, &mut to)?;
            to.set_permissions(std::fs::Permissions::from_mode(0o755))?;
            to.sync_all()?;
            std::fs::rename(&tmp, &target)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io("copying the shim to", &target))?;
    }
    Ok((node_path, !same))
}

/// Installs the shim and the runtime, restarting containerd only when its configuration
/// changed. Running it again changes nothing.
pub fn install(o: &Options) -> Result<Outcome, Error> {
    let record = read_record(o)?;
    let layout = detect(o)?;
    // Known before anything is written: a node the installer cannot restart is left as is.
    let method = resolve(o, layout.is_k3s())?;
    let node_path = layout.path().to_owned();
    let path = o.on_node(&node_path);
    let shown = node_path.to_string_lossy().into_owned();
    let current = read_optional(&path)?;
    let change = match (&layout, current.as_deref()) {
        (Layout::File { .. }, Some(text)) => {
            containerd_config::add_runtime(text, &shown, &o.runtime)?
        }
        (Layout::File { version, .. }, current) => {
            let wanted = containerd_config::drop_in(*version, &o.runtime);
            if current == Some(wanted.as_str()) {
                Change::Unchanged
            } else {
                Change::Write(wanted)
            }
        }
        (
            Layout::DropIn {
                version,
                systemd_cgroup,
                ..
            },
            current,
        ) => {
            let runtime = containerd_config::Runtime {
                systemd_cgroup: systemd_cgroup.or(o.runtime.systemd_cgroup),
                ..o.runtime.clone()
            };
            let wanted = containerd_config::drop_in(*version, &runtime);
            if current == Some(wanted.as_str()) {
                Change::Unchanged
            } else {
                Change::Write(wanted)
            }
        }
        (Layout::K3sTemplate { version, .. }, current) => {
            containerd_config::add_to_template(current, *version, &o.runtime)
        }
    };
    // Checked before anything is written, so a refused config leaves the node untouched.
    let (shim, shim_changed) = install_shim(o)?;
    // The original is what was there before the *first* install of this file.
    let original = match &record {
        Some(r) if r.config.path == node_path => r.config.original.clone(),
        _ => current.clone(),
    };
    let written = match &change {
        Change::Write(text) => {
            write_atomically(&path, text.as_bytes(), 0o644)?;
            text.clone()
        }
        Change::Unchanged => current.clone().unwrap_or_default(),
    };
    let config_changed = matches!(change, Change::Write(_)).then_some(node_path.clone());
    let mut new_record = Record {
        config: Installed {
            path: node_path,
            original,
            written,
        },
        k3s: layout.is_k3s(),
        shim,
        restart_pending: config_changed.is_some()
            || record.as_ref().is_some_and(|r| r.restart_pending),
    };
    save_record(o, record.as_ref(), &new_record)?;
    let restarted = if new_record.restart_pending {
        let how = restart(o, &method, new_record.k3s)?;
        let before = new_record.clone();
        new_record.restart_pending = false;
        save_record(o, Some(&before), &new_record)?;
        how
    } else {
        None
    };
    Ok(Outcome {
        config_changed,
        shim_changed,
        restarted,
    })
}

/// Restores what [`install`] changed, from its record: the configuration's original bytes
/// (or, if others edited the file since, the file without the runtime), the shim removed,
/// containerd restarted. Without a record there is nothing to undo.
pub fn uninstall(o: &Options) -> Result<Outcome, Error> {
    let Some(record) = read_record(o)? else {
        return Ok(Outcome::default());
    };
    let path = o.on_node(&record.config.path);
    let current = read_optional(&path)?;
    let restored = match &current {
        Some(text) => record.config.undo(text, &o.runtime.handler)?,
        None => None,
    };
    let config_changed = if restored == current {
        None
    } else {
        match &restored {
            Some(text) => write_atomically(&path, text.as_bytes(), 0o644)?,
            None => {
                remove_optional(&path)?;
            }
        }
        Some(record.config.path.clone())
    };
    let shim_changed = remove_optional(&o.on_node(&record.shim))?;
    let restarted = match config_changed {
        Some(_) => restart(o, &resolve(o, record.k3s)?, record.k3s)?,
        None => None,
    };
    // Last: if anything above failed, the record is still there for the next attempt.
    remove_optional(&o.on_node(&o.state_file))?;
    Ok(Outcome {
        config_changed,
        shim_changed,
        restarted,
    })
}

/// The method [`Restart::Auto`] stands for on this node (other methods stand for
/// themselves); k3s nodes restart k3s's unit.
pub fn resolve(o: &Options, k3s: bool) -> Result<Restart, Error> {
    if o.restart != Restart::Auto {
        return Ok(o.restart.clone());
    }
    let unit_exists = |unit: &str| {
        [
            "/etc/systemd/system",
            "/lib/systemd/system",
            "/usr/lib/systemd/system",
        ]
        .iter()
        .any(|d| o.on_node(&Path::new(d).join(unit)).exists())
    };
    if !o.on_node(Path::new("/run/systemd/system")).is_dir() {
        return Err(Error::NoRestartMethod);
    }
    if k3s {
        // A k3s agent runs as `k3s-agent`, a server as `k3s`.
        let unit = if unit_exists("k3s-agent.service") {
            "k3s-agent"
        } else {
            "k3s"
        };
        return Ok(Restart::Systemd(unit.to_owned()));
    }
    Ok(Restart::Systemd("containerd".to_owned()))
}

/// A command run in the node's root, unless this process already runs in it: in the node's
/// own mount namespace when the node's PID 1 is visible (the chart's `hostPID`) and its root
/// is the one mounted at `root`, else chrooted there. A chroot is not enough for systemd:
/// `systemctl` run in one answers "Running in chroot, ignoring request" and exits 0 without
/// restarting anything (`SYSTEMD_IGNORE_CHROOT` is set for that fallback).
fn on_node_command(root: &Path, program: &str, args: &[&str]) -> Result<Command, Error> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let same_root = std::fs::canonicalize(root).is_ok_and(|r| r == Path::new("/"));
    if same_root {
        return Ok(cmd);
    }
    if same_file(Path::new("/proc/1/root"), root) {
        let ns = std::fs::File::open("/proc/1/ns/mnt").map_err(|e| Error::Io {
            what: "opening the node's mount namespace",
            path: PathBuf::from("/proc/1/ns/mnt"),
            source: e,
        })?;
        enter_mount_namespace_before_exec(&mut cmd, ns);
    } else {
        cmd.env("SYSTEMD_IGNORE_CHROOT", "1");
        chroot_before_exec(&mut cmd, root)?;
    }
    Ok(cmd)
}

/// Whether two paths are the same directory (device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[allow(unsafe_code)]
fn enter_mount_namespace_before_exec(cmd: &mut Command, ns: std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: setns and chdir are async-signal-safe; the forked child is single-threaded, which
    // setns(CLONE_NEWNS) requires. `ns` lives in the closure until the command is dropped.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) != 0
                || libc::chdir(c"/".as_ptr()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[allow(unsafe_code)]
fn chroot_before_exec(cmd: &mut Command, root: &Path) -> Result<(), Error> {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::ffi::CString::new(root.as_os_str().as_bytes()).map_err(|e| Error::Io {
        what: "using as the node's root",
        path: root.to_owned(),
        source: std::io::Error::other(e),
    })?;
    // SAFETY: chroot and chdir are async-signal-safe, and nothing is allocated between fork
    // and exec (the path was made into a C string beforehand).
    unsafe {
        cmd.pre_exec(move || {
            if libc::chroot(dir.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Which socket file is at `path`: its inode number and change time. The number alone is not
/// enough: a file system may give the socket a restarted containerd creates the inode number
/// its predecessor's just freed (ext4 does, and the installer then waited forever).
fn socket_identity(path: &Path) -> Option<(u64, i64, i64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Restarts containerd (or k3s) and waits until a *new* containerd answers on its socket.
/// Returns how it was restarted; `None` when the method is [`Restart::None`].
fn restart(o: &Options, method: &Restart, k3s: bool) -> Result<Option<String>, Error> {
    let (shown, mut cmd) = match method {
        Restart::None => return Ok(None),
        Restart::Auto => return Err(Error::NoRestartMethod),
        Restart::Systemd(unit) => (
            format!("systemctl restart {unit}"),
            on_node_command(&o.root, "systemctl", &["restart", unit])?,
        ),
        Restart::Command(c) => (c.clone(), on_node_command(&o.root, "/bin/sh", &["-c", c])?),
    };
    let default_socket = if k3s {
        K3S_CONTAINERD_SOCKET
    } else {
        CONTAINERD_SOCKET
    };
    let node_socket = o
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(default_socket));
    let socket = o.on_node(&node_socket);
    let before = socket_identity(&socket);
    let out = cmd
        .output()
        .map_err(io("running the restart command in", &o.root))?;
    if !out.status.success() {
        return Err(Error::RestartFailed {
            command: shown,
            status: out.status,
            output: String::from_utf8_lossy(&[out.stdout, out.stderr].concat())
                .trim()
                .to_owned(),
        });
    }
    // containerd removes and re-creates its socket on start, so a new socket file that
    // accepts connections is the restarted containerd, not the old one on its way out.
    let started = Instant::now();
    loop {
        let now = socket_identity(&socket);
        if now.is_some()
            && now != before
            && std::os::unix::net::UnixStream::connect(&socket).is_ok()
        {
            return Ok(Some(shown));
        }
        if started.elapsed() > o.restart_timeout {
            return Err(Error::NotBack {
                command: shown,
                socket: node_socket,
                waited: o.restart_timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(200)); // poll interval
    }
}
