//! A real containerd 2.2 (built from the Go modules, see `build-binaries.sh`) with a private
//! root, state and sockets, for shim tests driven with the real `ctr`, or, started with
//! [`Containerd::start_cri`], through its CRI with the real `crictl` as the kubelet drives it
//! (pods on a CNI bridge of their own, the pause image imported).
//!
//! The wa8s shim is found on containerd's PATH (the directory given to [`Containerd::start`]);
//! its node configuration (cache directory) is private to the instance. On drop every task is
//! killed and deleted, containerd is stopped by PID, and its mounts and directories removed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::binaries;
use crate::cleanup::{remove_all_pods, remove_cgroups, remove_network, unmount_under};
use crate::error::{self, io_err};
use crate::image;
use crate::paths::{bridge, cni_network, pod_subnet, repo_root};
use crate::process::{self, Lifetime};

/// Errors starting containerd or running `ctr`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Binaries(#[from] binaries::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("containerd did not answer within 30s; its log:\n{0}")]
    NotReady(String),
    #[error("ctr {args}: exit {code:?}\n{stderr}")]
    Ctr {
        args: String,
        code: Option<i32>,
        stderr: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The wa8s runtime in containerd 2.x's CRI configuration (version 3), as the node
/// installer writes it.
pub(crate) fn wa8s_runtime() -> String {
    use wa8s_installer::containerd_config::{Runtime, runtime_table};
    runtime_table(3, &Runtime::default())
}

/// The part of a private containerd's configuration every instance here shares: its own
/// root, state, sockets and opt directory under `dir`, no NRI (its socket is machine-wide, so
/// parallel instances would collide), and CRI sandboxes that runc can create without
/// CAP_SYS_RESOURCE.
pub(crate) fn base_config(dir: &Path, socket: &Path) -> String {
    let (d, sock) = (dir.display(), socket.display());
    format!(
        r#"version = 3
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins.'io.containerd.internal.v1.opt']
  path = "{d}/opt"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
"#
    )
}

/// What one `ctr` call printed.
#[derive(Debug, Clone)]
pub struct CtrOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A running containerd.
#[derive(Debug)]
pub struct Containerd {
    pid: u32,
    exe: PathBuf,
    ctr: PathBuf,
    dir: PathBuf,
    namespace: String,
    /// With the CRI: `crictl` and the CNI network index its pods use.
    cri: Option<(PathBuf, u8)>,
    _tmp: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd with `shim_dir` (holding `containerd-shim-wa8s-v1`) on its PATH.
    pub fn start(shim_dir: &Path) -> Result<Self, Error> {
        Self::start_with(shim_dir, None)
    }

    /// Like [`Containerd::start`], for pods made through the CRI: their network is CNI
    /// network `network` (bridge `wa8s<N>`, `10.24<4+N>.0.0/24`; distinct from every other
    /// instance running at the same time), images are pulled from `insecure_registries` over
    /// plain HTTP, and the pause image is imported. On drop every pod is removed through the
    /// CRI (CNI DEL) and the bridge deleted.
    pub fn start_cri(
        shim_dir: &Path,
        network: u8,
        insecure_registries: &[String],
    ) -> Result<Self, Error> {
        Self::start_with(shim_dir, Some((network, insecure_registries)))
    }

    fn start_with(shim_dir: &Path, cri: Option<(u8, &[String])>) -> Result<Self, Error> {
        let bins = binaries::ensure(&["containerd", "ctr", "crictl"])?;
        let tmp = tempfile::Builder::new()
            .prefix("wa8s-containerd-")
            .tempdir()
            .map_err(io("creating the containerd directory"))?;
        let dir = tmp.path().to_path_buf();
        let d = dir.display();
        // Socket paths must stay short (108 bytes); the temp dir is under /tmp.
        let mut config = format!(
            "{}[debug]\n  address = \"{d}/debug.sock\"\n  level = \"debug\"\n{}",
            base_config(&dir, &dir.join("c.sock")),
            wa8s_runtime()
        );
        if let Some((network, registries)) = cri {
            let node_err = |e: crate::error::Error| Error::Io {
                what: "preparing the CRI's network and registries".into(),
                source: std::io::Error::other(e.to_string()),
            };
            crate::netns::prepare_run_netns().map_err(io("preparing /run/netns"))?;
            for sub in ["cni/net.d", "cni/ipam", "certs.d"] {
                std::fs::create_dir_all(dir.join(sub)).map_err(io(format!("creating {sub}")))?;
            }
            write_cni_config(&dir, network).map_err(node_err)?;
            write_registry_hosts(&dir, registries, &[]).map_err(node_err)?;
            config.push_str(&cri_config(&dir));
        }
        std::fs::write(dir.join("config.toml"), config).map_err(io("writing config.toml"))?;
        // The test registries are on loopback: the shim's own pull may reach them (its
        // address policy refuses loopback registries it is not told about).
        let private = cri.map(|(_, registries)| registries).unwrap_or_default();
        let shim_config = serde_json::json!({
            "cacheDir": dir.join("wa8s-cache"),
            "privateRegistries": private,
        });
        std::fs::write(
            dir.join("shim.json"),
            serde_json::to_vec_pretty(&shim_config).unwrap_or_default(),
        )
        .map_err(io("writing shim.json"))?;
        let exe = bins["containerd"].clone();
        let path = format!(
            "{}:{}:{}",
            shim_dir.display(),
            exe.parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new(&exe);
        cmd.arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", path)
            .env("WA8S_SHIM_CONFIG", dir.join("shim.json"));
        let pid = process::spawn(cmd, &dir.join("containerd.log"), Lifetime::Attached)
            .map_err(io("starting containerd"))?;
        let me = Containerd {
            pid,
            exe,
            ctr: bins["ctr"].clone(),
            dir,
            namespace: {
                static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("wa8s-test-{}-{n}", std::process::id())
            },
            cri: cri.map(|(network, _)| (bins["crictl"].clone(), network)),
            _tmp: tmp,
        };
        let ready =
            process::eventually(Duration::from_secs(30), Duration::from_millis(100), || {
                me.ctr(&["version"]).ok().filter(|o| o.code == Some(0))
            });
        if ready.is_none() {
            return Err(Error::NotReady(me.log()));
        }
        if me.cri.is_some() {
            import_pause_image(&me.dir, &me.ctr, &me.socket()).map_err(|e| Error::Io {
                what: "importing the pause image".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        Ok(me)
    }

    /// Runs `crictl --runtime-endpoint unix://SOCKET ARGS` (60 s limit); needs
    /// [`Containerd::start_cri`].
    pub fn crictl(&self, args: &[&str]) -> Result<CtrOutput, Error> {
        let Some((crictl, _)) = &self.cri else {
            return Err(Error::Io {
                what: format!("crictl {}", args.join(" ")),
                source: std::io::Error::other("this containerd was started without the CRI"),
            });
        };
        let mut cmd = Command::new(crictl);
        cmd.arg("--runtime-endpoint")
            .arg(format!("unix://{}", self.socket().display()))
            .args(["--timeout", "50s"])
            .args(args);
        let out = process::run_with_timeout(cmd, Duration::from_secs(60))
            .map_err(io(format!("running crictl {}", args.join(" "))))?;
        Ok(CtrOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `crictl`, requiring success; returns stdout.
    pub fn crictl_ok(&self, args: &[&str]) -> Result<String, Error> {
        let out = self.crictl(args)?;
        if out.code != Some(0) {
            return Err(Error::Ctr {
                args: format!("(crictl) {}", args.join(" ")),
                code: out.code,
                stderr: out.stderr,
            });
        }
        Ok(out.stdout)
    }

    /// PIDs of the wa8s shim servers serving this containerd (their command line names its
    /// socket; guest processes, `containerd-shim-wa8s-v1 guest …`, are not counted).
    pub fn shim_servers(&self) -> Vec<u32> {
        self.wa8s_processes(false)
    }

    /// PIDs of this containerd's wa8s shim servers and of every wa8s guest process (guests
    /// carry no socket argument).
    pub fn shim_processes(&self) -> Vec<u32> {
        self.wa8s_processes(true)
    }

    fn wa8s_processes(&self, with_guests: bool) -> Vec<u32> {
        let socket = self.socket().to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                let shim = args.first()?.ends_with(b"containerd-shim-wa8s-v1");
                let guest = args.get(1).is_some_and(|a| *a == b"guest");
                let server = !guest && args.contains(&socket.as_bytes());
                (shim && (server || (with_guests && guest))).then_some(pid)
            })
            .collect()
    }

    /// A cgroup parent for CRI pod `pod` (`linux.cgroup_parent`), removed with this
    /// containerd.
    pub fn cgroup_parent(&self, pod: &str) -> String {
        format!("/{}/{pod}", self.namespace)
    }

    /// A directory that lives as long as this containerd (for CRI configs and logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The containerd namespace `ctr` uses (unique per instance; ctr puts task cgroups
    /// under `/<namespace>/<id>`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// containerd's log so far (the shim's own log lines land here too).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The grpc socket (`ctr -a`, `crictl --runtime-endpoint unix://…`).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("c.sock")
    }

    /// Runs `ctr -a SOCKET -n wa8s-test ARGS` (60 s limit).
    pub fn ctr(&self, args: &[&str]) -> Result<CtrOutput, Error> {
        self.ctr_in(&self.namespace, args)
    }

    /// Runs `ctr` in the CRI's namespace (`k8s.io`), where images pulled through the CRI are.
    pub fn ctr_cri(&self, args: &[&str]) -> Result<CtrOutput, Error> {
        self.ctr_in("k8s.io", args)
    }

    fn ctr_in(&self, namespace: &str, args: &[&str]) -> Result<CtrOutput, Error> {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("-a")
            .arg(self.socket())
            .args(["-n", namespace])
            .args(args);
        let out = process::run_with_timeout(cmd, Duration::from_secs(60))
            .map_err(io(format!("running ctr {}", args.join(" "))))?;
        Ok(CtrOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            // containerd 2.2 warns about cgroup v1 on every call; that is not the test's news.
            stderr: String::from_utf8_lossy(&out.stderr)
                .lines()
                .filter(|l| !l.contains("DEPRECATION"))
                .collect::<Vec<_>>()
                .join("\n"),
        })
    }

    /// `ctr`, requiring success; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String, Error> {
        let out = self.ctr(args)?;
        if out.code != Some(0) {
            return Err(Error::Ctr {
                args: args.join(" "),
                code: out.code,
                stderr: out.stderr,
            });
        }
        Ok(out.stdout)
    }

    /// Imports an OCI image layout tarball (see [`crate::image`]).
    pub fn import(&self, tarball: &[u8], platform: &str) -> Result<(), Error> {
        let path = self.dir.join(format!("import-{}.tar", std::process::id()));
        std::fs::write(&path, tarball).map_err(io("writing the image tarball"))?;
        let result = self.ctr_ok(&[
            "image",
            "import",
            "--platform",
            platform,
            &path.to_string_lossy(),
        ]);
        let _ = std::fs::remove_file(&path);
        result.map(drop)
    }

    /// Kills task `id` (SIGKILL), waits (bounded) until it can be deleted, and deletes it
    /// and its container. Returns whether the task was deleted.
    pub fn remove(&self, id: &str) -> bool {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let deleted =
            process::eventually(Duration::from_secs(10), Duration::from_millis(50), || {
                self.ctr(&["task", "delete", id])
                    .ok()
                    .filter(|o| o.code == Some(0))
            })
            .is_some();
        let _ = self.ctr(&["container", "delete", id]);
        deleted
    }

    fn cleanup_tasks(&self) {
        let Ok(list) = self.ctr(&["task", "ls", "-q"]) else {
            return;
        };
        for id in list.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
            self.remove(id);
        }
        if let Ok(list) = self.ctr(&["container", "ls", "-q"]) {
            for id in list.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = self.ctr(&["container", "delete", id]);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.cri.is_some() {
            // While containerd runs: CNI DEL for each pod (its netns, address, rules).
            remove_all_pods(&self.socket());
        }
        self.cleanup_tasks();
        process::terminate(self.pid, Some(&self.exe), Duration::from_secs(10));
        // The namespace-level cgroup parents the tasks' (and CRI pods') cgroups were made
        // under, deepest first.
        remove_cgroups(&self.namespace);
        // Snapshot mounts of anything that was still running.
        unmount_under(&self.dir);
        if let Some((_, network)) = &self.cri {
            remove_network(*network);
        }
    }
}

/// The sandbox (pause) image every pod's sandbox uses; imported, never pulled.
pub const PAUSE_IMAGE: &str = "wa8s.local/pause:1";

/// containerd's CRI settings for a node whose files are in `dir`: CNI from Debian's
/// plugins and `dir/cni/net.d`, the imported pause image (never pulled), registry hosts
/// from `dir/certs.d`, streaming (logs, exec, port-forward) on loopback.
pub(crate) fn cri_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["/usr/lib/cni"]
  conf_dir = "{d}/cni/net.d"
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "{PAUSE_IMAGE}"
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = "{d}/certs.d"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
"#
    )
}

/// The CNI configuration of network `n` (a bridge, host-local addresses) in `dir/cni/net.d`.
pub(crate) fn write_cni_config(dir: &Path, n: u8) -> Result<(), error::Error> {
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": cni_network(n),
        "plugins": [{
            "type": "bridge",
            "bridge": bridge(n),
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": pod_subnet(n) }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": dir.join("cni/ipam"),
            },
        }],
    });
    std::fs::write(
        dir.join("cni/net.d/10-wa8s.conflist"),
        serde_json::to_vec_pretty(&config).unwrap_or_default(),
    )
    .map_err(io_err("writing the CNI configuration"))
}

/// containerd's per-registry hosts.toml: plain HTTP for the local registries, and mirrors.
pub(crate) fn write_registry_hosts(
    dir: &Path,
    insecure_registries: &[String],
    mirrors: &[(String, String)],
) -> Result<(), error::Error> {
    let plain = |host: &str| insecure_registries.iter().any(|r| r == host);
    let scheme = |host: &str| if plain(host) { "http" } else { "https" };
    let mut files: Vec<(String, String)> = Vec::new();
    for reg in insecure_registries {
        files.push((
            reg.clone(),
            format!(
                "server = \"http://{reg}\"\n[host.\"http://{reg}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n"
            ),
        ));
    }
    for (from, to) in mirrors {
        files.push((
            from.clone(),
            format!(
                "server = \"{}://{from}\"\n[host.\"{}://{to}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                scheme(from),
                scheme(to)
            ),
        ));
    }
    for (host, text) in files {
        let d = dir.join("certs.d").join(&host);
        std::fs::create_dir_all(&d).map_err(io_err(format!("creating {}", d.display())))?;
        std::fs::write(d.join("hosts.toml"), text)
            .map_err(io_err(format!("writing {}/hosts.toml", d.display())))?;
    }
    Ok(())
}

pub(crate) fn ctr_cmd(
    ctr: &Path,
    socket: &Path,
    args: &[&str],
) -> std::io::Result<std::process::Output> {
    let mut cmd = Command::new(ctr);
    cmd.arg("-a").arg(socket).args(["-n", "k8s.io"]).args(args);
    process::run_with_timeout(cmd, Duration::from_secs(60))
}

/// Builds the pause program (static, from `e2e/pause/pause.c`) into an image and imports it
/// into the CRI's namespace. Sandbox images are never pulled here: no outside registry.
pub(crate) fn import_pause_image(
    dir: &Path,
    ctr: &Path,
    socket: &Path,
) -> Result<(), error::Error> {
    let source = repo_root().join("e2e/pause/pause.c");
    let binary = dir.join("pause");
    let mut cc = Command::new("gcc");
    cc.args(["-static", "-Os", "-s", "-o"])
        .arg(&binary)
        .arg(&source);
    let out = process::run_with_timeout(cc, Duration::from_secs(60))
        .map_err(io_err("running gcc for the pause image"))?;
    if !out.status.success() {
        return Err(error::Error::Io {
            what: format!("building {} with gcc -static", source.display()),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        });
    }
    let bytes = std::fs::read(&binary).map_err(io_err("reading the pause binary"))?;
    let tarball = image::linux(PAUSE_IMAGE, &[("pause", &bytes, 0o755)], &["/pause"])
        .map_err(io_err("writing the pause image"))?;
    let path = dir.join("pause.tar");
    std::fs::write(&path, tarball).map_err(io_err("writing pause.tar"))?;
    let out = ctr_cmd(
        ctr,
        socket,
        &["image", "import", "--local", &path.to_string_lossy()],
    )
    .map_err(io_err("running ctr image import"))?;
    if !out.status.success() {
        return Err(error::Error::Io {
            what: "importing the pause image".into(),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        });
    }
    Ok(())
}
