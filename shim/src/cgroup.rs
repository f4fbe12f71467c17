//! The container's cgroup: created from the OCI spec's `cgroupsPath` and resources, joined
//! by the guest process before it runs any guest code, read for Stats, removed on delete.
//!
//! Both cgroup drivers and both cgroup versions:
//! - `cgroupfs` driver: `cgroupsPath` is a path below each hierarchy's root
//!   (`/kubepods/besteffort/pod<uid>/<id>`).
//! - `systemd` driver (kind's and kubeadm's default): containerd passes
//!   `slice:prefix:name` (`kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>`). The
//!   guest goes where runc's systemd driver puts a container: the scope `prefix-name.scope`
//!   inside the slice, below the root systemd manages (PID 1's cgroup without `init.scope`).
//!   The shim creates that directory itself instead of asking systemd over D-Bus for a
//!   transient scope: the guest must be inside the cgroup before it runs (it joins between
//!   fork and exec, or is cloned into it on v2), there is one less daemon on the start path,
//!   and the kubelet and cAdvisor only read the pod slice, which holds the scope either way.
//!   systemd leaves a unit-less directory below a slice alone on v1; on v2 it could turn
//!   controllers off in the pod slice when it re-realizes that slice (the kubelet does not
//!   change a running pod's slice), which is the trade-off of not registering a unit.
//! - cgroup v1 (one hierarchy per controller; `name=systemd` and a hybrid `unified` mount
//!   only hold processes) and v2 (one hierarchy; the needed controllers are enabled down
//!   the path, as runc does).

use std::path::{Component, Path, PathBuf};

/// Errors at the cgroup boundary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup hierarchy found for the {0} controller")]
    NoController(&'static str),
    #[error("cgroupsPath {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Limits from the spec's `linux.resources`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<i64>,
    pub cpu_quota_us: Option<i64>,
    pub cpu_period_us: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub pids: Option<i64>,
}

/// A spec's `cgroupsPath`, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupsPath {
    /// cgroupfs driver: a path below each hierarchy's root.
    Fs(PathBuf),
    /// systemd driver: the scope `unit` in the slice whose directory (below systemd's root)
    /// is `slice`.
    Systemd { slice: PathBuf, unit: String },
}

impl CgroupsPath {
    /// Parses `cgroupsPath` as runc does: `slice:prefix:name` is the systemd driver's form
    /// (an empty slice means `system.slice`); anything else is a cgroupfs path.
    pub fn parse(path: &str) -> Result<Self, Error> {
        let bad = |reason| Error::BadPath {
            path: path.to_owned(),
            reason,
        };
        let parts: Vec<&str> = path.split(':').collect();
        match parts.as_slice() {
            [slice, prefix, name] => {
                if name.is_empty() {
                    return Err(bad("the systemd form slice:prefix:name has an empty name"));
                }
                if name.contains('/') || prefix.contains('/') {
                    return Err(bad("a systemd unit name cannot contain '/'"));
                }
                let slice = if slice.is_empty() {
                    "system.slice"
                } else {
                    slice
                };
                // runc: a name that is itself a slice is used as is.
                let unit = if name.ends_with(".slice") {
                    (*name).to_owned()
                } else if prefix.is_empty() {
                    format!("{name}.scope")
                } else {
                    format!("{prefix}-{name}.scope")
                };
                Ok(CgroupsPath::Systemd {
                    slice: expand_slice(slice).map_err(bad)?,
                    unit,
                })
            }
            [_] => {
                let p = Path::new(path);
                if p.components().any(|c| matches!(c, Component::ParentDir)) {
                    return Err(bad("'..' is not allowed"));
                }
                Ok(CgroupsPath::Fs(p.to_path_buf()))
            }
            _ => Err(bad(
                "neither a cgroupfs path nor the systemd form slice:prefix:name",
            )),
        }
    }

    /// The directory below the hierarchy's root, given systemd's root in that hierarchy.
    fn relative(&self, systemd_root: &Path) -> PathBuf {
        match self {
            CgroupsPath::Fs(p) => strip_root(p),
            CgroupsPath::Systemd { slice, unit } => {
                strip_root(systemd_root).join(strip_root(slice)).join(unit)
            }
        }
    }
}

fn strip_root(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// systemd's slice naming: `a-b-c.slice` lives at `/a.slice/a-b.slice/a-b-c.slice`; `-.slice`
/// is the root.
fn expand_slice(slice: &str) -> Result<PathBuf, &'static str> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err("a systemd slice name must end in .slice");
    };
    if slice.contains('/') {
        return Err("a systemd slice name cannot contain '/'");
    }
    if stem == "-" {
        return Ok(PathBuf::from("/"));
    }
    if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return Err("a systemd slice name cannot be empty, start or end with '-', or hold '--'");
    }
    let mut path = PathBuf::from("/");
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path)
}

/// The controllers wa8s limits and reads on v1.
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];
/// The controllers wa8s needs enabled on the way down a v2 hierarchy.
const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Where this node's cgroup hierarchies are mounted, and where PID 1 sits in each (systemd's
/// root, for the systemd driver).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// `(controller, mount point)` of each v1 controller wa8s manages; empty on a v2 node.
    v1: Vec<(&'static str, PathBuf)>,
    /// v1 hierarchies that only hold processes: `name=systemd`, and a hybrid node's
    /// `unified` (v2) mount.
    tracking: Vec<(&'static str, PathBuf)>,
    /// The v2 mount of a v2-only node.
    v2: Option<PathBuf>,
    /// PID 1's cgroup per hierarchy key (`memory`, ..., `name=systemd`, `unified`).
    init: Vec<(String, PathBuf)>,
}

impl Layout {
    /// Reads `/proc/self/mounts` and `/proc/1/cgroup`.
    pub fn detect() -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        // Unreadable (another PID namespace's init we may not read): the root is used.
        let init = std::fs::read_to_string("/proc/1/cgroup").unwrap_or_default();
        Self::parse(&mounts, &init)
    }

    /// The layout a `/proc/self/mounts` and a `/proc/1/cgroup` text describe.
    pub fn parse(mounts: &str, init_cgroup: &str) -> Self {
        let mut layout = Layout::default();
        let mut cgroup2 = Vec::new();
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            let target = PathBuf::from(unescape_mount(f[1]));
            match f[2] {
                "cgroup" => {
                    let options: Vec<&str> = f[3].split(',').collect();
                    for c in V1_CONTROLLERS {
                        if options.contains(&c) && !layout.v1.iter().any(|(n, _)| *n == c) {
                            layout.v1.push((c, target.clone()));
                        }
                    }
                    if options.contains(&"name=systemd")
                        && !layout.tracking.iter().any(|(n, _)| *n == "name=systemd")
                    {
                        layout.tracking.push(("name=systemd", target));
                    }
                }
                "cgroup2" => cgroup2.push(target),
                _ => {}
            }
        }
        if let Some(unified) = cgroup2.into_iter().next() {
            if layout.v1.is_empty() {
                layout.v2 = Some(unified);
            } else {
                layout.tracking.push(("unified", unified));
            }
        }
        for line in init_cgroup.lines() {
            let mut f = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if controllers.is_empty() {
                layout.init.push(("unified".into(), PathBuf::from(path)));
            } else {
                for c in controllers.split(',') {
                    layout.init.push((c.to_owned(), PathBuf::from(path)));
                }
            }
        }
        layout
    }

    /// Where systemd's tree starts in hierarchy `key`: PID 1's cgroup there without a
    /// trailing `init.scope` (systemd ≥ 226 runs itself in `init.scope`), as runc computes it.
    fn systemd_root(&self, key: &str) -> PathBuf {
        let init = self
            .init
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| PathBuf::from("/"));
        if init.file_name().is_some_and(|n| n == "init.scope") {
            init.parent().map(Path::to_path_buf).unwrap_or(init)
        } else {
            init
        }
    }

    /// Whether this node runs cgroup v2 only.
    pub fn is_v2(&self) -> bool {
        self.v2.is_some() && self.v1.is_empty()
    }
}

/// `/proc/self/mounts` escapes spaces and the like as octal (`\040`).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A container's cgroup: one directory per v1 controller, or one v2 directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    v2: bool,
    /// `(controller, directory)`; for v2 a single `("unified", dir)`.
    dirs: Vec<(&'static str, PathBuf)>,
    /// Directories in hierarchies that only track processes (joined, never limited).
    tracking: Vec<PathBuf>,
    /// Ancestors this cgroup's creation made (e.g. `/wa8s-test` for `/wa8s-test/id`),
    /// removed again when empty.
    made: Vec<PathBuf>,
}

impl Cgroup {
    /// Creates the cgroup `path` names on this node, with `limits`.
    pub fn create(path: &CgroupsPath, limits: &Limits) -> Result<Self, Error> {
        Self::create_in(&Layout::detect(), path, limits)
    }

    /// Creates the cgroup `path` names in `layout`, with `limits`.
    pub fn create_in(layout: &Layout, path: &CgroupsPath, limits: &Limits) -> Result<Self, Error> {
        let mut cg = Cgroup {
            v2: layout.is_v2(),
            dirs: Vec::new(),
            tracking: Vec::new(),
            made: Vec::new(),
        };
        if let Some(mount) = layout.v2.as_ref().filter(|_| cg.v2) {
            let rel = path.relative(&layout.systemd_root("unified"));
            let dir = mount.join(&rel);
            cg.made_dir(&dir)?;
            enable_controllers(mount, &rel);
            cg.dirs.push(("unified", dir));
        } else {
            for (controller, mount) in &layout.v1 {
                let dir = mount.join(path.relative(&layout.systemd_root(controller)));
                cg.made_dir(&dir)?;
                cg.dirs.push((controller, dir));
            }
            // systemd driver only: the guest also goes where systemd tracks processes, so
            // systemd (and whoever lists a slice) sees it in its pod and stopping the pod's
            // slice stops it. A hierarchy that refuses it costs no limit. The cgroupfs driver
            // skips these (no systemd to tell; one attach less on the start path).
            let tracking: &[_] = match path {
                CgroupsPath::Systemd { .. } => &layout.tracking,
                CgroupsPath::Fs(_) => &[],
            };
            for (key, mount) in tracking {
                let dir = mount.join(path.relative(&layout.systemd_root(key)));
                match cg.made_dir(&dir) {
                    Ok(()) => cg.tracking.push(dir),
                    Err(e) => {
                        tracing::warn!("the guest is not tracked in the {key} hierarchy: {e}")
                    }
                }
            }
        }
        if cg.dirs.is_empty() {
            return Err(Error::NoController("memory"));
        }
        cg.apply(limits)?;
        Ok(cg)
    }

    /// Creates `dir` and remembers which of its ancestors did not exist.
    fn made_dir(&mut self, dir: &Path) -> Result<(), Error> {
        let mut missing: Vec<PathBuf> = dir
            .ancestors()
            .skip(1)
            .take_while(|a| !a.exists())
            .map(Path::to_path_buf)
            .collect();
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        self.made.append(&mut missing);
        Ok(())
    }

    fn dir(&self, controller: &'static str) -> Result<&Path, Error> {
        let want = if self.v2 { "unified" } else { controller };
        self.dirs
            .iter()
            .find(|(c, _)| *c == want)
            .map(|(_, d)| d.as_path())
            .ok_or(Error::NoController(controller))
    }

    fn write(&self, controller: &'static str, file: &str, value: &str) -> Result<(), Error> {
        let path = self.dir(controller)?.join(file);
        std::fs::write(&path, value).map_err(io(&path))
    }

    fn apply(&self, l: &Limits) -> Result<(), Error> {
        if self.v2 {
            if let Some(m) = l.memory_bytes {
                self.write("memory", "memory.max", &m.to_string())?;
                // A guest stopped at its limit is killed, not left thrashing in swap.
                let swap = self.dir("memory")?.join("memory.swap.max");
                if swap.exists() {
                    std::fs::write(&swap, "0").map_err(io(&swap))?;
                }
            }
            if let Some(q) = l.cpu_quota_us {
                let period = l.cpu_period_us.unwrap_or(100_000);
                self.write("cpu", "cpu.max", &format!("{q} {period}"))?;
            }
            if let Some(s) = l.cpu_shares {
                self.write("cpu", "cpu.weight", &shares_to_weight(s).to_string())?;
            }
            if let Some(p) = l.pids {
                self.write("pids", "pids.max", &p.to_string())?;
            }
            return Ok(());
        }
        if let Some(m) = l.memory_bytes {
            self.write("memory", "memory.limit_in_bytes", &m.to_string())?;
        }
        if let Some(p) = l.cpu_period_us {
            self.write("cpu", "cpu.cfs_period_us", &p.to_string())?;
        }
        if let Some(q) = l.cpu_quota_us {
            self.write("cpu", "cpu.cfs_quota_us", &q.to_string())?;
        }
        if let Some(s) = l.cpu_shares {
            self.write("cpu", "cpu.shares", &s.to_string())?;
        }
        if let Some(p) = l.pids {
            self.write("pids", "pids.max", &p.to_string())?;
        }
        Ok(())
    }

    /// The v2 directory, for `CLONE_INTO_CGROUP`.
    pub fn v2_dir(&self) -> Option<&Path> {
        self.v2
            .then(|| self.dirs.first().map(|(_, d)| d.as_path()))?
    }

    /// The `cgroup.procs` files a process writes its pid to in order to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, d)| d)
            .chain(&self.tracking)
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    fn read_u64(&self, controller: &'static str, file: &str) -> Option<u64> {
        let path = self.dir(controller).ok()?.join(file);
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    fn read_keyed(&self, controller: &'static str, file: &str, key: &str) -> Option<u64> {
        let path = self.dir(controller).ok()?.join(file);
        std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// Current usage.
    pub fn stats(&self) -> Stats {
        if self.v2 {
            return Stats {
                v2: true,
                memory_usage: self.read_u64("memory", "memory.current").unwrap_or(0),
                // "max" (no limit) does not parse.
                memory_limit: self.read_u64("memory", "memory.max").unwrap_or(u64::MAX),
                memory_max_usage: self.read_u64("memory", "memory.peak").unwrap_or(0),
                inactive_file: self
                    .read_keyed("memory", "memory.stat", "inactive_file")
                    .unwrap_or(0),
                cpu_usage_ns: self
                    .read_keyed("cpu", "cpu.stat", "usage_usec")
                    .unwrap_or(0)
                    .saturating_mul(1000),
                cpu_user_ns: self
                    .read_keyed("cpu", "cpu.stat", "user_usec")
                    .unwrap_or(0)
                    .saturating_mul(1000),
                cpu_system_ns: self
                    .read_keyed("cpu", "cpu.stat", "system_usec")
                    .unwrap_or(0)
                    .saturating_mul(1000),
                pids: self.read_u64("pids", "pids.current").unwrap_or(0),
                oom_kills: self
                    .read_keyed("memory", "memory.events", "oom_kill")
                    .unwrap_or(0),
            };
        }
        Stats {
            v2: false,
            memory_usage: self
                .read_u64("memory", "memory.usage_in_bytes")
                .unwrap_or(0),
            memory_limit: self
                .read_u64("memory", "memory.limit_in_bytes")
                .unwrap_or(u64::MAX),
            memory_max_usage: self
                .read_u64("memory", "memory.max_usage_in_bytes")
                .unwrap_or(0),
            inactive_file: self
                .read_keyed("memory", "memory.stat", "total_inactive_file")
                .unwrap_or(0),
            cpu_usage_ns: self.read_u64("cpuacct", "cpuacct.usage").unwrap_or(0),
            cpu_user_ns: self.read_u64("cpuacct", "cpuacct.usage_user").unwrap_or(0),
            cpu_system_ns: self.read_u64("cpuacct", "cpuacct.usage_sys").unwrap_or(0),
            pids: self.read_u64("pids", "pids.current").unwrap_or(0),
            oom_kills: self
                .read_keyed("memory", "memory.oom_control", "oom_kill")
                .unwrap_or(0),
        }
    }

    /// Removes the directories (they must be empty of processes).
    pub fn remove(&self) -> Result<(), Error> {
        for dir in self.dirs.iter().map(|(_, d)| d).chain(&self.tracking) {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::Io {
                        path: dir.clone(),
                        source: e,
                    });
                }
            }
        }
        // Deepest first; a parent another container still uses stays (not empty).
        let mut made = self.made.clone();
        made.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for dir in made {
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }
}

/// Turns on the controllers wa8s needs in every cgroup from the v2 mount down to `rel`'s
/// parent, as runc does: a controller is usable in a cgroup only if its parent delegates it
/// in `cgroup.subtree_control`. A controller the parent does not have is skipped (its limit
/// then fails with a message naming the file).
fn enable_controllers(mount: &Path, rel: &Path) {
    let mut dir = mount.to_path_buf();
    for part in rel.components() {
        let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let enabled =
            std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        for c in V2_CONTROLLERS {
            let has = |text: &str| text.split_whitespace().any(|x| x == c);
            if has(&available) && !has(&enabled) {
                let file = dir.join("cgroup.subtree_control");
                if let Err(e) = std::fs::write(&file, format!("+{c}")) {
                    tracing::warn!("enabling the {c} controller in {}: {e}", file.display());
                }
            }
        }
        dir.push(part);
    }
}

/// cgroup v1 `cpu.shares` (2–262144) to v2 `cpu.weight` (1–10000), the conversion runc and
/// the kubelet use.
fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// Usage read from the cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Read from a v2 cgroup (reported to containerd as v2 metrics).
    pub v2: bool,
    pub memory_usage: u64,
    pub memory_limit: u64,
    pub memory_max_usage: u64,
    /// Page cache the kernel can reclaim (the kubelet's working set leaves it out).
    pub inactive_file: u64,
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub pids: u64,
    pub oom_kills: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn systemd(slice: &str, unit: &str) -> CgroupsPath {
        CgroupsPath::Systemd {
            slice: PathBuf::from(slice),
            unit: unit.into(),
        }
    }

    #[test]
    fn the_systemd_form_names_a_scope_in_the_expanded_pod_slice() {
        let p = CgroupsPath::parse("kubepods-besteffort-podab12.slice:cri-containerd:c0ffee")
            .expect("parses");
        assert_eq!(
            p,
            systemd(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podab12.slice",
                "cri-containerd-c0ffee.scope"
            )
        );
        assert_eq!(
            p.relative(Path::new("/")),
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podab12.slice/cri-containerd-c0ffee.scope"
            )
        );
    }

    #[test]
    fn the_systemd_form_defaults_like_runc() {
        assert_eq!(
            CgroupsPath::parse(":cri-containerd:x").expect("parses"),
            systemd("/system.slice", "cri-containerd-x.scope")
        );
        assert_eq!(
            CgroupsPath::parse("-.slice::x").expect("parses"),
            systemd("/", "x.scope")
        );
        assert_eq!(
            CgroupsPath::parse("kubepods.slice:p:kubepods-pod1.slice").expect("parses"),
            systemd("/kubepods.slice", "kubepods-pod1.slice")
        );
    }

    #[test]
    fn a_cgroupfs_path_stays_a_path() {
        let p = CgroupsPath::parse("/kubepods/besteffort/pod1/c1").expect("parses");
        assert_eq!(
            p,
            CgroupsPath::Fs(PathBuf::from("/kubepods/besteffort/pod1/c1"))
        );
        // systemd's root does not move a cgroupfs path.
        assert_eq!(
            p.relative(Path::new("/machine.slice/x.scope")),
            PathBuf::from("kubepods/besteffort/pod1/c1")
        );
    }

    #[test]
    fn malformed_cgroups_paths_are_refused_with_the_reason() {
        for (bad, reason) in [
            ("kubepods-pod1:cri-containerd:x", "must end in .slice"),
            ("a--b.slice:p:x", "'--'"),
            ("-a.slice:p:x", "start or end with '-'"),
            ("a.slice:p:", "empty name"),
            ("a.slice:p/q:x", "cannot contain '/'"),
            ("a:b", "neither"),
            ("a:b:c:d", "neither"),
            ("/kubepods/../../etc", "'..'"),
        ] {
            let e = CgroupsPath::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(reason), "{bad}: {e}");
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    const V1_MOUNTS: &str = "\
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,nosuid,nodev,noexec,relatime,pids 0 0
proc /proc proc rw 0 0
";

    #[test]
    fn a_hybrid_node_limits_in_v1_and_tracks_in_systemd_and_unified() {
        let init = "\
12:pids:/machine.slice/libpod-abc.scope
7:memory:/machine.slice/libpod-abc.scope
4:cpu,cpuacct:/machine.slice/libpod-abc.scope
1:name=systemd:/machine.slice/libpod-abc.scope/init.scope
0::/machine.slice/libpod-abc.scope/init.scope
";
        let l = Layout::parse(V1_MOUNTS, init);
        assert!(!l.is_v2());
        assert_eq!(
            l.v1,
            vec![
                ("memory", PathBuf::from("/sys/fs/cgroup/memory")),
                ("cpu", PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")),
                ("cpuacct", PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")),
                ("pids", PathBuf::from("/sys/fs/cgroup/pids")),
            ]
        );
        assert_eq!(
            l.tracking,
            vec![
                ("name=systemd", PathBuf::from("/sys/fs/cgroup/systemd")),
                ("unified", PathBuf::from("/sys/fs/cgroup/unified")),
            ]
        );
        // A kind node on a v1 host: systemd's tree starts at the node container's cgroup.
        assert_eq!(
            l.systemd_root("memory"),
            PathBuf::from("/machine.slice/libpod-abc.scope")
        );
        assert_eq!(
            l.systemd_root("name=systemd"),
            PathBuf::from("/machine.slice/libpod-abc.scope")
        );
    }

    #[test]
    fn a_v2_node_has_one_hierarchy_rooted_where_systemd_is() {
        let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        let l = Layout::parse(mounts, "0::/init.scope\n");
        assert!(l.is_v2());
        assert_eq!(l.systemd_root("unified"), PathBuf::from("/"));
        assert!(l.tracking.is_empty());
    }

    /// A fake v2 tree: the files a v2 kernel shows, as plain files.
    fn fake_v2(root: &Path) -> Layout {
        let pod =
            root.join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod9.slice");
        std::fs::create_dir_all(&pod).expect("tree");
        for dir in [
            root.to_path_buf(),
            root.join("kubepods.slice"),
            root.join("kubepods.slice/kubepods-burstable.slice"),
            pod.clone(),
        ] {
            std::fs::write(
                dir.join("cgroup.controllers"),
                "cpuset cpu io memory pids\n",
            )
            .expect("controllers");
            std::fs::write(dir.join("cgroup.subtree_control"), "").expect("subtree");
        }
        std::fs::write(root.join("cgroup.subtree_control"), "cpu memory pids\n").expect("root");
        Layout::parse(
            &format!("cgroup2 {} cgroup2 rw 0 0\n", root.display()),
            "0::/init.scope\n",
        )
    }

    #[test]
    fn a_v2_cgroup_gets_limits_in_the_pod_slice_and_enables_controllers_on_the_way() {
        let tmp = tempfile::tempdir().expect("tmp");
        let layout = fake_v2(tmp.path());
        let path =
            CgroupsPath::parse("kubepods-burstable-pod9.slice:cri-containerd:c1").expect("parses");
        let limits = Limits {
            memory_bytes: Some(32 << 20),
            cpu_quota_us: Some(10_000),
            cpu_period_us: Some(100_000),
            cpu_shares: Some(102),
            pids: Some(64),
        };
        let cg = Cgroup::create_in(&layout, &path, &limits).expect("created");
        let dir = tmp
            .path()
            .join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod9.slice/cri-containerd-c1.scope");
        assert_eq!(cg.v2_dir(), Some(dir.as_path()));
        assert_eq!(cg.procs_files(), vec![dir.join("cgroup.procs")]);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect(f);
        assert_eq!(read("memory.max"), "33554432");
        assert_eq!(read("cpu.max"), "10000 100000");
        assert_eq!(read("cpu.weight"), "4");
        assert_eq!(read("pids.max"), "64");
        // Each ancestor below the mount was asked for the controllers (a fake file keeps the
        // last write); the root already had them.
        let pod = tmp
            .path()
            .join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod9.slice");
        assert_eq!(
            std::fs::read_to_string(pod.join("cgroup.subtree_control")).expect("pod"),
            "+pids"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("cgroup.subtree_control")).expect("root"),
            "cpu memory pids\n"
        );
        // Nothing above the scope was made by us, so removing it leaves the pod slice.
        std::fs::remove_dir_all(&dir).expect("fake files");
        cg.remove().expect("removed");
        assert!(pod.exists());
    }

    #[test]
    fn v2_stats_read_the_v2_files() {
        let tmp = tempfile::tempdir().expect("tmp");
        let layout = fake_v2(tmp.path());
        let cg = Cgroup::create_in(
            &layout,
            &CgroupsPath::parse("/wa8s/c2").expect("parses"),
            &Limits::default(),
        )
        .expect("created");
        let dir = tmp.path().join("wa8s/c2");
        for (f, text) in [
            ("memory.current", "4096\n"),
            ("memory.max", "max\n"),
            ("memory.peak", "8192\n"),
            (
                "memory.stat",
                "anon 4096\ninactive_file 1024\nactive_file 0\n",
            ),
            (
                "cpu.stat",
                "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
            ),
            ("pids.current", "3\n"),
            ("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n"),
        ] {
            std::fs::write(dir.join(f), text).expect(f);
        }
        assert_eq!(
            cg.stats(),
            Stats {
                v2: true,
                memory_usage: 4096,
                memory_limit: u64::MAX,
                memory_max_usage: 8192,
                inactive_file: 1024,
                cpu_usage_ns: 1_500_000,
                cpu_user_ns: 1_000_000,
                cpu_system_ns: 500_000,
                pids: 3,
                oom_kills: 1,
            }
        );
    }

    #[test]
    fn shares_convert_to_weights_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 100);
    }

    #[test]
    fn mount_points_with_escaped_characters_are_unescaped() {
        assert_eq!(unescape_mount(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount(r"/plain"), "/plain");
    }
}
