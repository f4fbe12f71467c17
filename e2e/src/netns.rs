//! Network namespaces made by a test, as the CRI makes one per pod; removed on drop.

use std::path::PathBuf;
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
