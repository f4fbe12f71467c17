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
