//! Teardown of what a test started: processes stopped by PID from a state directory's
//! record (bounded by a grace period), pods removed through the CRI, then mounts, cgroups,
//! kube-proxy's tables and the bridge of the node's network. Nothing here starts anything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::binaries;
use crate::paths::{bridge, cgroup_root, cni_network, containerd_socket, node_dir, upstream_netns};
use crate::process;

/// How long each process gets to exit after SIGTERM before SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// Stops the processes recorded in `state_dir/pids` (only if they still run the recorded
/// executable) and removes the directory. Safe to call on a directory that does not exist.
pub fn stop_state_dir(state_dir: &Path) {
    if let Ok(text) = std::fs::read_to_string(state_dir.join("pids")) {
        let entries: Vec<(String, u32, PathBuf)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ' ');
                let (name, pid, exe) = (f.next()?, f.next()?.parse().ok()?, f.next()?);
                Some((name.to_owned(), pid, PathBuf::from(exe)))
            })
            .collect();
        for (name, pid, exe) in entries.into_iter().rev() {
            if name == "containerd" && process::is_running(pid, Some(&exe)) {
                // The kubelet is already stopped, so nothing restarts what this removes.
                remove_pods(state_dir);
            }
            process::terminate(pid, Some(&exe), STOP_GRACE);
        }
    }
    clean_up_after(state_dir);
    let _ = std::fs::remove_dir_all(state_dir);
}

/// Whether the control plane recorded in `state_dir` has all its processes running.
pub fn is_up(state_dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(state_dir.join("pids")) else {
        return false;
    };
    let mut n = 0;
    for l in text.lines() {
        let mut f = l.splitn(3, ' ');
        let (Some(_), Some(pid), Some(exe)) = (f.next(), f.next(), f.next()) else {
            return false;
        };
        let Ok(pid) = pid.parse() else { return false };
        if !process::is_running(pid, Some(Path::new(exe))) {
            return false;
        }
        n += 1;
    }
    // etcd and kube-apiserver, plus kube-controller-manager when it was started.
    n >= 2
}

/// Removes test control planes left by runs whose process no longer exists.
pub(crate) fn sweep_stale(run: &Path) {
    let Ok(entries) = std::fs::read_dir(run) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `test-<pid>`, `test-<pid>-kcm`, `test-<pid>-node`.
        let Some(pid) = name
            .strip_prefix("test-")
            .and_then(|p| p.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !process::is_running(pid, None) {
            stop_state_dir(&e.path());
        }
    }
}

/// The shared control plane lives in a static that is never dropped; its processes would die
/// with the test process anyway (PR_SET_PDEATHSIG), but stopping them by PID and removing the
/// state directory at exit leaves nothing behind.
pub(crate) fn stop_at_exit(dir: &Path) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn stop() {
        if let Some(dir) = DIR.get() {
            stop_state_dir(dir);
        }
    }
    if DIR.set(dir.to_owned()).is_ok() {
        register_at_exit(stop);
    }
}

#[allow(unsafe_code)]
fn register_at_exit(f: extern "C" fn()) {
    // SAFETY: atexit only records the function pointer; `f` is a plain extern "C" fn.
    unsafe {
        libc::atexit(f);
    }
}

/// Removes every pod of the node recorded under `state_dir` through the CRI (so CNI DEL runs
/// and each pod's netns and iptables rules go), while its containerd still runs.
pub(crate) fn remove_pods(state_dir: &Path) {
    remove_all_pods(&containerd_socket(state_dir));
}

/// Removes every pod of the CRI at `socket` (CNI DEL runs for each), bounded in time.
pub(crate) fn remove_all_pods(socket: &Path) {
    if !socket.exists() {
        return;
    }
    let Ok(bins) = binaries::ensure(&["crictl"]) else {
        return;
    };
    let endpoint = format!("unix://{}", socket.display());
    let crictl = |args: &[&str]| {
        let mut cmd = Command::new(&bins["crictl"]);
        cmd.args(["--runtime-endpoint", &endpoint, "--timeout", "30s"])
            .args(args);
        process::run_with_timeout(cmd, Duration::from_secs(90)).ok()
    };
    let _ = crictl(&["rmp", "--all", "--force"]);
}

/// After the node's processes are gone: stops shims still serving its containerd address,
/// unmounts what is left under the state directory, removes its cgroups and its bridge.
pub(crate) fn clean_up_after(state_dir: &Path) {
    let dir = node_dir(state_dir);
    let Ok(network) = std::fs::read_to_string(state_dir.join("node-network")) else {
        return;
    };
    let Ok(network) = network.trim().parse::<u8>() else {
        return;
    };
    // Shims outlive containerd by design; ours carry its socket path on their command line.
    let address = containerd_socket(state_dir).to_string_lossy().into_owned();
    for pid in processes_mentioning(&address) {
        process::terminate(pid, None, Duration::from_secs(5));
    }
    unmount_under(&dir);
    remove_cgroups(&cgroup_root(network));
    // kube-proxy's rules: the nftables tables it was started with (kube-proxy is stopped).
    if let Ok(tables) = std::fs::read_to_string(dir.join("kube-proxy-tables")) {
        for table in tables.lines().filter(|l| !l.trim().is_empty()) {
            let mut args = vec!["delete", "table"];
            args.extend(table.split_whitespace());
            let _ = Command::new("nft")
                .args(&args)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    // A scenario's upstream server namespaces (their veths go with them).
    let prefix = upstream_netns(network);
    let listed = Command::new("ip").args(["netns", "list"]).output();
    let names = listed.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    for name in names.iter().flat_map(|text| text.lines()) {
        let name = name.split_whitespace().next().unwrap_or_default();
        if name.starts_with(&prefix) {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    remove_network(network);
}

/// Removes network `n`'s bridge and libcni's cached results for it (its pods are gone).
pub(crate) fn remove_network(n: u8) {
    let _ = Command::new("ip")
        .args(["link", "del", &bridge(n)])
        .stderr(std::process::Stdio::null())
        .status();
    // libcni's result cache is machine-wide; drop only this network's entries.
    if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
        let prefix = format!("{}-", cni_network(n));
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == needle.as_bytes()))
        })
        .collect()
}

/// Lazily unmounts everything mounted under `dir`, deepest first.
pub(crate) fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|t| t.starts_with(&prefix))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let _ = Command::new("umount").arg("-l").arg(t).status();
    }
}

/// Removes `/<root>` in every cgroup hierarchy, deepest directories first.
pub(crate) fn remove_cgroups(root: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        let top = h.path().join(root);
        if top.is_dir() {
            remove_tree(&top);
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
