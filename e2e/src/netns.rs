//! Network namespaces made by a test, as the CRI makes one per pod; removed on drop.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A named network namespace (`ip netns`) with loopback up.
#[derive(Debug)]
pub struct Netns(String);

impl Netns {
    /// Creates `name` (replacing a leftover of the same name).
    pub fn new(name: &str) -> std::io::Result<Self> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", name])?;
        let ns = Netns(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.0)
    }

    /// Joins it to the caller's namespace by a veth pair, both ends up: `outside` (in the
    /// caller's namespace, address `outside_ip/prefix`) and `eth0` inside (`inside_ip/prefix`).
    /// The pair goes with the namespace. `outside_ip` is then one of this machine's addresses.
    pub fn veth(
        &self,
        outside: &str,
        outside_ip: Ipv4Addr,
        inside_ip: Ipv4Addr,
        prefix: u8,
    ) -> std::io::Result<()> {
        let _ = Command::new("ip")
            .args(["link", "del", outside])
            .stderr(Stdio::null())
            .status();
        let ns = self.0.as_str();
        ip(&[
            "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{outside_ip}/{prefix}"),
            "dev",
            outside,
        ])?;
        ip(&["link", "set", outside, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{inside_ip}/{prefix}"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])
    }

    /// Runs `f` inside it (see [`within`]).
    pub fn within<T: Send>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send,
    ) -> std::io::Result<T> {
        within(&self.path(), f)
    }

    /// `network:<path>`, as `ctr run --with-ns` takes it.
    pub fn ctr_spec(&self) -> String {
        format!("network:{}", self.path().display())
    }

    /// The body of a successful `curl` of `url` from inside the namespace.
    pub fn get(&self, url: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "curl", "-sf", "-m", "5", url])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Runs `f` on a thread that joined the network namespace at `netns` (a pod's, or one from
/// [`Netns`]): sockets it makes stay in that namespace whichever thread uses them later, and
/// threads it starts start there. The calling thread's namespace does not change.
#[allow(unsafe_code)]
pub fn within<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a descriptor we own; it changes only this thread's namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
    })
}

/// The network namespace of a pod sandbox, from `crictl inspectp`'s JSON (the sandbox's
/// runtime spec): where a wa8s pod's guest makes its connections.
pub fn of_sandbox(inspectp: &serde_json::Value) -> Option<PathBuf> {
    inspectp["info"]["runtimeSpec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .map(PathBuf::from)
}

/// Makes `/run/netns` the shared mount point `ip netns` turns it into on its first use, before
/// anything (containerd's CRI) mounts pod namespaces there. `ip netns add` bind-mounts the
/// directory onto itself when it is not a mount point yet; done while pod namespaces are
/// mounted in it, that hides them under the new mount, where nothing can unmount or remove
/// them (seen: a scenario's first `ip netns add` leaked two pods' namespaces).
pub fn prepare_run_netns() -> std::io::Result<()> {
    // Tests of one binary run in parallel threads of one process: the pid alone is not unique.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("wa8s-prepare-{}-{n}", std::process::id());
    ip(&["netns", "add", &name])?;
    ip(&["netns", "del", &name])
}

/// Runs `ip ARGS`; a failure carries what `ip` said.
pub fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
