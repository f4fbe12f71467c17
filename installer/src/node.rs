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

use crate::containerd_config::{self, Change, HostsDir, Installed, Runtime};
use crate::registry_hosts::{self, DEFAULT_HOSTS_DIR, HostsFile};
use wa8s_oci::RegistryConfig;

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
/// RKE2's containerd directory (k3s's agent code: the same templates, socket and layout).
pub const RKE2_CONTAINERD_DIR: &str = "/var/lib/rancher/rke2/agent/etc/containerd";
/// k0s's containerd configuration: k0s writes it with `imports` of `containerd.d/*.toml`.
pub const K0S_CONTAINERD_CONFIG: &str = "/etc/k0s/containerd.toml";
pub const K0S_CONTAINERD_SOCKET: &str = "/run/k0s/containerd.sock";
/// MicroK8s renders `containerd.toml` from this template at each containerd start.
pub const MICROK8S_CONTAINERD_TEMPLATE: &str =
    "/var/snap/microk8s/current/args/containerd-template.toml";
pub const MICROK8S_CONTAINERD_SOCKET: &str = "/var/snap/microk8s/common/run/containerd.sock";
/// What MicroK8s's `${SNAP_DATA}` stands for in its template.
const MICROK8S_SNAP_DATA: &str = "/var/snap/microk8s/current";

/// Whose containerd a node runs: where its configuration and socket are and how it is
/// restarted. Found from the file the installer writes, so uninstall knows it from its
/// record alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// containerd's own layout (kubeadm, kind, managed node images).
    Containerd,
    K3s,
    Rke2,
    /// k0s: restarts its containerd itself when `containerd.d` changes.
    K0s,
    /// MicroK8s: its containerd's `PATH` is the snap's read-only image first, so the shim
    /// is always named by its absolute path.
    MicroK8s,
}

impl Distribution {
    /// The distribution whose file `config` (a node path) is.
    pub fn of(config: &Path) -> Self {
        if config.starts_with(K3S_CONTAINERD_DIR) {
            Distribution::K3s
        } else if config.starts_with(RKE2_CONTAINERD_DIR) {
            Distribution::Rke2
        } else if config.starts_with("/etc/k0s") {
            Distribution::K0s
        } else if config.starts_with("/var/snap/microk8s") {
            Distribution::MicroK8s
        } else {
            Distribution::Containerd
        }
    }

    /// The distribution of the file the installer writes: by its place, and a template
    /// elsewhere (a configured path) is k3s's kind.
    fn of_file(config: &Path, template: bool) -> Self {
        match Self::of(config) {
            Distribution::Containerd if template => Distribution::K3s,
            d => d,
        }
    }

    /// Its containerd's socket (node path).
    pub fn socket(self) -> &'static str {
        match self {
            Distribution::Containerd => CONTAINERD_SOCKET,
            Distribution::K3s | Distribution::Rke2 => K3S_CONTAINERD_SOCKET,
            Distribution::K0s => K0S_CONTAINERD_SOCKET,
            Distribution::MicroK8s => MICROK8S_CONTAINERD_SOCKET,
        }
    }

    /// The systemd units that run its containerd, the agent's before the server's.
    fn units(self) -> &'static [&'static str] {
        match self {
            Distribution::Containerd => &["containerd"],
            Distribution::K3s => &["k3s-agent", "k3s"],
            Distribution::Rke2 => &["rke2-agent", "rke2-server"],
            Distribution::K0s => &[],
            Distribution::MicroK8s => &["snap.microk8s.daemon-containerd"],
        }
    }
}

/// Why a node could not be prepared (or restored). Files are never left half-written: every
/// write is a temporary file renamed into place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] containerd_config::Error),
    #[error(transparent)]
    Hosts(#[from] registry_hosts::Error),
    #[error(
        "{path}: the registry settings need containerd's registry hosts directory (config_path), which containerd refuses next to the deprecated registry.mirrors / registry.configs this file sets; move those to hosts.toml files (https://github.com/containerd/containerd/blob/main/docs/hosts.md) or unset the chart's registry settings; left untouched"
    )]
    LegacyRegistry { path: PathBuf },
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
    /// The distribution restarts containerd itself when its drop-in directory changes
    /// (k0s): wait for the new containerd.
    Itself,
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
    /// Registries the node's containerd reaches through a mirror, over plain HTTP or with a
    /// CA: written as its `hosts.toml` files (empty: none, and earlier ones are removed).
    pub registry: RegistryConfig,
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
            registry: RegistryConfig::default(),
        }
    }

    /// The record of the registry hosts files written (node path), beside the main record
    /// and separate from it, so an older installer still reads its own.
    pub fn hosts_record(&self) -> PathBuf {
        self.state_file.with_file_name("registry-hosts.json")
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

/// The template a k3s-family node renders containerd's configuration from: the existing
/// one, else the one matching the version it renders.
fn template_in(o: &Options, dir: &Path) -> Result<PathBuf, Error> {
    let v3 = dir.join("config-v3.toml.tmpl");
    let v2 = dir.join("config.toml.tmpl");
    if o.on_node(&v3).exists() {
        return Ok(v3);
    }
    if o.on_node(&v2).exists() {
        return Ok(v2);
    }
    // The template must match the version k3s renders (its containerd's).
    let rendered = dir.join("config.toml");
    Ok(match read_optional(&o.on_node(&rendered))? {
        Some(t) if containerd_config::version(&t, &rendered.to_string_lossy())? == 2 => v2,
        _ => v3,
    })
}

/// The main configuration file: the configured one, k0s's or containerd's.
fn main_config(o: &Options) -> PathBuf {
    match &o.config {
        Some(p) => p.clone(),
        None if o.on_node(Path::new(K0S_CONTAINERD_CONFIG)).is_file() => {
            K0S_CONTAINERD_CONFIG.into()
        }
        None => CONTAINERD_CONFIG.into(),
    }
}

/// Finds the layout: the configured file (a `.tmpl` is a k3s template); else a k3s or RKE2
/// node's template; else MicroK8s's template (plain TOML with `${…}` inside strings); else
/// k0s's or containerd's `config.toml`, through its drop-in directory when it imports one.
pub fn detect(o: &Options) -> Result<Layout, Error> {
    let k3s_dir = Path::new(K3S_CONTAINERD_DIR);
    let rke2_dir = Path::new(RKE2_CONTAINERD_DIR);
    let microk8s = Path::new(MICROK8S_CONTAINERD_TEMPLATE);
    let config = match &o.config {
        Some(p) => p.clone(),
        None if o.on_node(k3s_dir).is_dir() => template_in(o, k3s_dir)?,
        None if o.on_node(rke2_dir).is_dir() => template_in(o, rke2_dir)?,
        None if o.on_node(microk8s).is_file() => microk8s.to_owned(),
        None => main_config(o),
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
    /// Registry hosts files written or removed (node paths).
    pub hosts_changed: Vec<PathBuf>,
}

impl Outcome {
    /// Whether the run changed nothing on the node.
    pub fn is_noop(&self) -> bool {
        self.config_changed.is_none()
            && !self.shim_changed
            && self.restarted.is_none()
            && self.hosts_changed.is_empty()
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

/// Where the registry hosts files go on this node, and whether the configuration must be
/// made to name that directory. `None`: no files (none wanted, or a k3s template, whose
/// hosts k3s renders from its own `registries.yaml` at every start).
fn hosts_target(
    o: &Options,
    layout: &Layout,
    current: Option<&str>,
) -> Result<Option<(PathBuf, bool)>, Error> {
    if registry_hosts::files(&o.registry, Path::new(DEFAULT_HOSTS_DIR))?.is_empty() {
        return Ok(None);
    }
    let (main_path, main) = match layout {
        Layout::K3sTemplate { .. } => {
            tracing::warn!(
                "k3s and RKE2 render containerd's registry hosts from /etc/rancher/<k3s|rke2>/registries.yaml at each start: the chart's registry settings are not written on this node; add the mirrors there"
            );
            return Ok(None);
        }
        Layout::File { path, .. } => (path.clone(), current.map(str::to_owned)),
        Layout::DropIn { .. } => {
            let main = main_config(o);
            let text = read_optional(&o.on_node(&main))?;
            (main, text)
        }
    };
    let Some(text) = main else {
        return Ok(Some((DEFAULT_HOSTS_DIR.into(), true)));
    };
    match containerd_config::hosts_dir(&text, &main_path.to_string_lossy())? {
        // MicroK8s's template names it by `${SNAP_DATA}`.
        HostsDir::Set(dir) => Ok(Some((
            match dir.strip_prefix("${SNAP_DATA}") {
                Ok(rest) => Path::new(MICROK8S_SNAP_DATA).join(rest),
                Err(_) => dir,
            },
            false,
        ))),
        HostsDir::Unset => Ok(Some((DEFAULT_HOSTS_DIR.into(), true))),
        HostsDir::Legacy => Err(Error::LegacyRegistry { path: main_path }),
    }
}

/// A file the installer writes whole (its drop-in, or a `config.toml` it creates): the
/// runtime, and the registry hosts directory when it has to be named.
fn whole_file(version: i64, runtime: &Runtime, hosts_dir: Option<&Path>) -> String {
    let mut text = containerd_config::drop_in(version, runtime);
    if let Some(dir) = hosts_dir {
        text.push('\n');
        text.push_str(&containerd_config::hosts_dir_table(version, dir));
    }
    text
}

fn read_hosts_record(o: &Options) -> Result<Vec<Installed>, Error> {
    let node_path = o.hosts_record();
    let Some(text) = read_optional(&o.on_node(&node_path))? else {
        return Ok(Vec::new());
    };
    serde_json::from_str(&text).map_err(|e| Error::Record {
        path: node_path,
        reason: e.to_string(),
    })
}

fn save_hosts_record(o: &Options, files: &[Installed]) -> Result<(), Error> {
    let path = o.on_node(&o.hosts_record());
    if files.is_empty() {
        remove_optional(&path)?;
        return Ok(());
    }
    let json = serde_json::to_string_pretty(files).unwrap_or_default();
    write_atomically(&path, json.as_bytes(), 0o600)
}

/// Gives back a file the installer wrote: its original (or nothing) when it is still as
/// written; a file someone changed since is theirs now and left alone. Returns whether it
/// changed the node.
fn give_back(o: &Options, file: &Installed) -> Result<bool, Error> {
    let path = o.on_node(&file.path);
    let current = read_optional(&path)?;
    if current.as_deref() != Some(file.written.as_str()) {
        if current.is_some() {
            tracing::warn!(path = %file.path.display(), "changed since the installer wrote it: left as it is");
        }
        return Ok(false);
    }
    match &file.original {
        Some(text) => write_atomically(&path, text.as_bytes(), 0o644)?,
        None => {
            remove_optional(&path)?;
            // The registry's directory, if that emptied it (else this fails, as it should).
            if let Some(dir) = path.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
    Ok(true)
}

/// Brings the registry hosts files to `wanted`: each written unless already so (its
/// original kept from the first write), and those written earlier but no longer wanted
/// given back. Returns the node paths changed.
fn sync_hosts(o: &Options, wanted: &[HostsFile]) -> Result<Vec<PathBuf>, Error> {
    let old = read_hosts_record(o)?;
    let mut kept = Vec::new();
    let mut to_write = Vec::new();
    for file in wanted {
        let current = read_optional(&o.on_node(&file.path))?;
        let original = match old.iter().find(|i| i.path == file.path) {
            Some(i) => i.original.clone(),
            None => current.clone(),
        };
        if current.as_deref() != Some(file.text.as_str()) {
            to_write.push(file);
        }
        kept.push(Installed {
            path: file.path.clone(),
            original,
            written: file.text.clone(),
        });
    }
    let stale: Vec<&Installed> = old
        .iter()
        .filter(|i| !wanted.iter().any(|w| w.path == i.path))
        .collect();
    // Recorded before writing: a crash in between leaves a record uninstall can work from.
    let mut record = kept.clone();
    record.extend(stale.iter().map(|i| (*i).clone()));
    save_hosts_record(o, &record)?;
    let mut changed = Vec::new();
    for file in to_write {
        write_atomically(&o.on_node(&file.path), file.text.as_bytes(), 0o644)?;
        changed.push(file.path.clone());
    }
    for file in stale {
        if give_back(o, file)? {
            changed.push(file.path.clone());
        }
    }
    save_hosts_record(o, &kept)?;
    Ok(changed)
}

/// Installs the shim, the runtime and the registry hosts files, restarting containerd only
/// when its configuration changed. Running it again changes nothing.
pub fn install(o: &Options) -> Result<Outcome, Error> {
    let record = read_record(o)?;
    let layout = detect(o)?;
    // Known before anything is written: a node the installer cannot restart is left as is.
    let dist = Distribution::of_file(layout.path(), layout.is_k3s());
    let method = resolve(o, dist)?;
    let mut runtime = o.runtime.clone();
    if dist == Distribution::MicroK8s && runtime.runtime_path.is_none() {
        runtime.runtime_path = Some(o.shim_dir.join(SHIM_NAME).to_string_lossy().into_owned());
    }
    let node_path = layout.path().to_owned();
    let path = o.on_node(&node_path);
    let shown = node_path.to_string_lossy().into_owned();
    let current = read_optional(&path)?;
    let hosts = hosts_target(o, &layout, current.as_deref())?;
    let set_dir = hosts
        .as_ref()
        .filter(|(_, set)| *set)
        .map(|(dir, _)| dir.as_path());
    let whole = |wanted: String| {
        if current.as_deref() == Some(wanted.as_str()) {
            Change::Unchanged
        } else {
            Change::Write(wanted)
        }
    };
    let change = match (&layout, current.as_deref()) {
        (Layout::File { .. }, Some(text)) => {
            let change = containerd_config::add_runtime(text, &shown, &runtime)?;
            match set_dir {
                None => change,
                Some(dir) => {
                    let runtime_added = match &change {
                        Change::Write(t) => t.as_str(),
                        Change::Unchanged => text,
                    };
                    match containerd_config::set_hosts_dir(runtime_added, &shown, dir)? {
                        Change::Unchanged => change,
                        write => write,
                    }
                }
            }
        }
        (Layout::File { version, .. }, None) => whole(whole_file(*version, &runtime, set_dir)),
        (
            Layout::DropIn {
                version,
                systemd_cgroup,
                ..
            },
            _,
        ) => {
            let runtime = containerd_config::Runtime {
                systemd_cgroup: systemd_cgroup.or(runtime.systemd_cgroup),
                ..runtime.clone()
            };
            whole(whole_file(*version, &runtime, set_dir))
        }
        (Layout::K3sTemplate { version, .. }, current) => {
            containerd_config::add_to_template(current, *version, &runtime)
        }
    };
    let wanted_hosts = match &hosts {
        Some((dir, _)) => registry_hosts::files(&o.registry, dir)?,
        None => Vec::new(),
    };
    // Checked before anything is written, so a refused config leaves the node untouched.
    let (shim, shim_changed) = install_shim(o)?;
    // Before the configuration names their directory: containerd reads them at each pull.
    let hosts_changed = sync_hosts(o, &wanted_hosts)?;
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
        let how = restart(o, &method, dist)?;
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
        hosts_changed,
    })
}

/// Restores what [`install`] changed, from its record: the configuration's original bytes
/// (or, if others edited the file since, the file without the runtime), the shim removed,
/// containerd restarted. Without a record there is nothing to undo.
pub fn uninstall(o: &Options) -> Result<Outcome, Error> {
    // The registry hosts first: their record is separate, and holds only what was written.
    let mut hosts_changed = Vec::new();
    for file in read_hosts_record(o)? {
        if give_back(o, &file)? {
            hosts_changed.push(file.path.clone());
        }
    }
    save_hosts_record(o, &[])?;
    let Some(record) = read_record(o)? else {
        return Ok(Outcome {
            hosts_changed,
            ..Outcome::default()
        });
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
        Some(_) => {
            let dist = Distribution::of_file(&record.config.path, record.k3s);
            restart(o, &resolve(o, dist)?, dist)?
        }
        None => None,
    };
    // Last: if anything above failed, the record is still there for the next attempt.
    remove_optional(&o.on_node(&o.state_file))?;
    Ok(Outcome {
        config_changed,
        shim_changed,
        restarted,
        hosts_changed,
    })
}

/// The method [`Restart::Auto`] stands for on this node (other methods stand for
/// themselves): the distribution's systemd unit (an enabled one first: RKE2 installs both
/// its units on every node), or k0s's own restart.
pub fn resolve(o: &Options, dist: Distribution) -> Result<Restart, Error> {
    if o.restart != Restart::Auto {
        return Ok(o.restart.clone());
    }
    if dist == Distribution::K0s {
        return Ok(Restart::Itself);
    }
    let in_dirs = |dirs: &[&str], unit: &str| {
        let file = format!("{unit}.service");
        dirs.iter()
            .any(|d| o.on_node(&Path::new(d).join(&file)).exists())
    };
    let enabled = |unit: &str| in_dirs(&["/etc/systemd/system/multi-user.target.wants"], unit);
    let exists = |unit: &str| {
        in_dirs(
            &[
                "/etc/systemd/system",
                "/lib/systemd/system",
                "/usr/lib/systemd/system",
            ],
            unit,
        )
    };
    if !o.on_node(Path::new("/run/systemd/system")).is_dir() {
        return Err(Error::NoRestartMethod);
    }
    let units = dist.units();
    let unit = units
        .iter()
        .find(|u| enabled(u))
        .or_else(|| units.iter().find(|u| exists(u)))
        .or(units.last())
        .copied()
        .unwrap_or("containerd");
    Ok(Restart::Systemd(unit.to_owned()))
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
fn restart(o: &Options, method: &Restart, dist: Distribution) -> Result<Option<String>, Error> {
    let (shown, cmd) = match method {
        Restart::None => return Ok(None),
        Restart::Auto => return Err(Error::NoRestartMethod),
        Restart::Itself => (
            "k0s (it restarts containerd when containerd.d changes)".to_owned(),
            None,
        ),
        Restart::Systemd(unit) => (
            format!("systemctl restart {unit}"),
            Some(on_node_command(&o.root, "systemctl", &["restart", unit])?),
        ),
        Restart::Command(c) => (
            c.clone(),
            Some(on_node_command(&o.root, "/bin/sh", &["-c", c])?),
        ),
    };
    let node_socket = o
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(dist.socket()));
    let socket = o.on_node(&node_socket);
    let before = socket_identity(&socket);
    if let Some(mut cmd) = cmd {
        run_restart(&mut cmd, &shown, &o.root)?;
    }
    wait_for_new_socket(o, &shown, &node_socket, &socket, before)
}

fn run_restart(cmd: &mut Command, shown: &str, root: &Path) -> Result<(), Error> {
    let out = cmd
        .output()
        .map_err(io("running the restart command in", root))?;
    if !out.status.success() {
        return Err(Error::RestartFailed {
            command: shown.to_owned(),
            status: out.status,
            output: String::from_utf8_lossy(&[out.stdout, out.stderr].concat())
                .trim()
                .to_owned(),
        });
    }
    Ok(())
}

/// containerd removes and re-creates its socket on start, so a new socket file that accepts
/// connections is the restarted containerd, not the old one on its way out.
fn wait_for_new_socket(
    o: &Options,
    shown: &str,
    node_socket: &Path,
    socket: &Path,
    before: Option<(u64, i64, i64)>,
) -> Result<Option<String>, Error> {
    let started = Instant::now();
    loop {
        let now = socket_identity(socket);
        if now.is_some() && now != before && std::os::unix::net::UnixStream::connect(socket).is_ok()
        {
            return Ok(Some(shown.to_owned()));
        }
        if started.elapsed() > o.restart_timeout {
            return Err(Error::NotBack {
                command: shown.to_owned(),
                socket: node_socket.to_owned(),
                waited: o.restart_timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(200)); // poll interval
    }
}
