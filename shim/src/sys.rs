//! The few Linux system calls the shim makes that have no safe wrapper in the standard
//! library: joining a cgroup and a network namespace between fork and exec, and dropping
//! privileges in the guest process. Every `unsafe` block of the crate is here.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// What the child does between fork and exec, prepared in the parent (no allocation after
/// fork).
#[derive(Debug)]
pub struct Confinement {
    /// `cgroup.procs` files to write the child's pid to.
    pub cgroup_procs: Vec<CString>,
    /// Network namespace to enter.
    pub netns: Option<OwnedFd>,
    /// `(fd in the parent, fd number in the child)` to pass on.
    pub fds: Vec<(OwnedFd, i32)>,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Confinement {
    /// Arranges for `cmd`'s child to join the cgroup and network namespace, and to receive
    /// the listed descriptors, before it executes anything. Returns the parent's descriptors:
    /// keep them until `spawn` returns, then drop them.
    #[must_use = "the descriptors must outlive spawn, then be closed"]
    pub fn apply(self, cmd: &mut Command) -> Vec<OwnedFd> {
        let Confinement {
            cgroup_procs,
            netns,
            fds,
        } = self;
        let netns_fd = netns.as_ref().map(|f| f.as_raw_fd());
        let moves: Vec<(i32, i32)> = fds.iter().map(|(f, to)| (f.as_raw_fd(), *to)).collect();
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe calls (open, write, close, setns, dup2) on data prepared above.
        unsafe {
            cmd.pre_exec(move || {
                for path in &cgroup_procs {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    check(fd)?;
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if n != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if let Some(fd) = netns_fd {
                    check(libc::setns(fd, libc::CLONE_NEWNET))?;
                }
                for (from, to) in &moves {
                    if from == to {
                        check(libc::fcntl(*to, libc::F_SETFD, 0))?;
                    } else {
                        // dup2 clears close-on-exec on the new descriptor.
                        check(libc::dup2(*from, *to))?;
                    }
                }
                Ok(())
            });
        }
        netns
            .into_iter()
            .chain(fds.into_iter().map(|(f, _)| f))
            .collect()
    }
}

/// Sets `no_new_privs`, switches to `uid`/`gid` (with `groups`), and leaves the process with
/// no capabilities at all, bounding and ambient sets included.
pub fn drop_privileges(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: plain system calls with valid arguments; no memory is shared with the kernel
    // beyond the local buffers passed.
    unsafe {
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        for cap in 0..=63 {
            // EINVAL past the last capability this kernel knows.
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        check(libc::setgroups(groups.len(), groups.as_ptr()))?;
        check(libc::setgid(gid))?;
        check(libc::setuid(uid))?;
        // For uid 0 setuid keeps the capabilities; clear them explicitly.
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int)?;
    }
    Ok(())
}

/// Gives this process a private mount namespace in which each `(source, target)` file is
/// bind-mounted read-only over `target`. The guest uses it to resolve names with its pod's
/// `/etc/hosts` and `/etc/resolv.conf` instead of the node's. Call while the process is
/// still single-threaded (unshare of the mount namespace refuses a process sharing its
/// filesystem context with threads) and before dropping privileges.
pub fn private_files(files: &[(std::path::PathBuf, &str)]) -> io::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let cstr = |s: &[u8]| CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    let root = cstr(b"/")?;
    let none = cstr(b"none")?;
    // SAFETY: plain system calls on NUL-terminated strings that outlive them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        // Nothing mounted here propagates back to the node; the node's unmounts (other
        // pods' volumes) still propagate here, so this namespace pins none of them.
        check(libc::mount(
            none.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ))?;
        for (source, target) in files {
            use std::os::unix::ffi::OsStrExt;
            let source = cstr(source.as_os_str().as_bytes())?;
            let target = cstr(target.as_bytes())?;
            check(libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                none.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            ))?;
        }
    }
    Ok(())
}

/// The addresses of this network namespace's interfaces (the node's, when called by the
/// shim), loopback excluded.
pub fn interface_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we only read, then free once.
    unsafe {
        check(libc::getifaddrs(&mut list))?;
        let mut out = Vec::new();
        let mut cur = list;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*addr.cast::<libc::sockaddr_in>();
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*addr.cast::<libc::sockaddr_in6>();
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(list);
        out.retain(|ip| !ip.is_loopback());
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// Sends `signal` to `pid`.
pub fn kill(pid: u32, signal: i32) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kill has no memory arguments.
    check(unsafe { libc::kill(pid, signal) })
}

/// Takes ownership of descriptor `fd` if it is open: one the parent handed this process.
pub fn inherited_fd(fd: i32) -> Option<File> {
    // SAFETY: fcntl(F_GETFD) only inspects the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the shim passed this descriptor for this purpose (see Confinement) and nothing
    // else in this process refers to it.
    Some(unsafe { File::from_raw_fd(fd) })
}
