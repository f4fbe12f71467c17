//! The container's cgroup (cgroupfs driver): created from the OCI spec's `cgroupsPath` and
//! resources, joined by the guest process before it runs any guest code, read for Stats,
//! removed on delete. cgroup v1 (one hierarchy per controller, as on this host) and v2.

use std::path::{Path, PathBuf};

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

/// A container's cgroup: one directory per v1 controller, or one v2 directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    v2: bool,
    /// `(controller, directory)`; for v2 a single `("unified", dir)`.
    dirs: Vec<(&'static str, PathBuf)>,
    /// Ancestors this cgroup's creation made (e.g. `/wa8s-test` for `/wa8s-test/id`),
    /// removed again when empty.
    made: Vec<PathBuf>,
}

/// The controllers wa8s manages on v1.
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];

/// Where each v1 controller is mounted, or `None` for a v2-only host.
fn v1_mounts() -> Option<Vec<(&'static str, PathBuf)>> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut found = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[2] != "cgroup" {
            continue;
        }
        let options: Vec<&str> = f[3].split(',').collect();
        for c in V1_CONTROLLERS {
            if options.contains(&c) && !found.iter().any(|(n, _)| *n == c) {
                found.push((c, PathBuf::from(f[1])));
            }
        }
    }
    (!found.is_empty()).then_some(found)
}

impl Cgroup {
    /// Creates the cgroup at `path` (relative to each hierarchy's root) with `limits`.
    pub fn create(path: &str, limits: &Limits) -> Result<Self, Error> {
        let rel = path.trim_start_matches('/');
        let cg = match v1_mounts() {
            Some(mounts) => Cgroup {
                v2: false,
                dirs: mounts
                    .into_iter()
                    .map(|(c, root)| (c, root.join(rel)))
                    .collect(),
                made: Vec::new(),
            },
            None => Cgroup {
                v2: true,
                dirs: vec![("unified", PathBuf::from("/sys/fs/cgroup").join(rel))],
                made: Vec::new(),
            },
        };
        let mut cg = cg;
        for (_, dir) in &cg.dirs {
            let mut missing: Vec<PathBuf> = dir
                .ancestors()
                .skip(1)
                .take_while(|a| !a.exists())
                .map(Path::to_path_buf)
                .collect();
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            cg.made.append(&mut missing);
        }
        cg.apply(limits)?;
        Ok(cg)
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
            }
            if let Some(q) = l.cpu_quota_us {
                let period = l.cpu_period_us.unwrap_or(100_000);
                self.write("cpu", "cpu.max", &format!("{q} {period}"))?;
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

    /// The `cgroup.procs` files a process writes its pid to in order to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
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
                memory_usage: self.read_u64("memory", "memory.current").unwrap_or(0),
                memory_limit: self.read_u64("memory", "memory.max").unwrap_or(u64::MAX),
                memory_max_usage: self.read_u64("memory", "memory.peak").unwrap_or(0),
                cpu_usage_ns: self
                    .read_keyed("cpu", "cpu.stat", "usage_usec")
                    .unwrap_or(0)
                    .saturating_mul(1000),
                pids: self.read_u64("pids", "pids.current").unwrap_or(0),
                oom_kills: self
                    .read_keyed("memory", "memory.events", "oom_kill")
                    .unwrap_or(0),
            };
        }
        Stats {
            memory_usage: self
                .read_u64("memory", "memory.usage_in_bytes")
                .unwrap_or(0),
            memory_limit: self
                .read_u64("memory", "memory.limit_in_bytes")
                .unwrap_or(u64::MAX),
            memory_max_usage: self
                .read_u64("memory", "memory.max_usage_in_bytes")
                .unwrap_or(0),
            cpu_usage_ns: self.read_u64("cpuacct", "cpuacct.usage").unwrap_or(0),
            pids: self.read_u64("pids", "pids.current").unwrap_or(0),
            oom_kills: self
                .read_keyed("memory", "memory.oom_control", "oom_kill")
                .unwrap_or(0),
        }
    }

    /// Removes the directories (they must be empty of processes).
    pub fn remove(&self) -> Result<(), Error> {
        for (_, dir) in &self.dirs {
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

/// Usage read from the cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub memory_usage: u64,
    pub memory_limit: u64,
    pub memory_max_usage: u64,
    pub cpu_usage_ns: u64,
    pub pids: u64,
    pub oom_kills: u64,
}
