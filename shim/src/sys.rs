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
                join_cgroups(&cgroup_procs)?;
                // The PID namespace cannot be entered by the process itself; these can.
                check(libc::unshare(libc::CLONE_NEWIPC | libc::CLONE_NEWUTS))?;
                enter(netns_fd, &moves)
            });
        }
        netns
            .into_iter()
            .chain(fds.into_iter().map(|(f, _)| f))
            .collect()
    }
}

/// Writes the calling process into each `cgroup.procs` file. Async-signal-safe.
fn join_cgroups(cgroup_procs: &[CString]) -> io::Result<()> {
    for path in cgroup_procs {
        // SAFETY: open, write and close on a NUL-terminated path prepared before fork.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            check(fd)?;
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if n != 1 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// The child's side of a confinement after it is in its cgroup: the network namespace, then
/// the descriptors it inherits. Async-signal-safe.
fn enter(netns_fd: Option<i32>, moves: &[(i32, i32)]) -> io::Result<()> {
    // SAFETY: setns, fcntl and dup2 on descriptors the parent keeps open until the child
    // has executed.
    unsafe {
        if let Some(fd) = netns_fd {
            check(libc::setns(fd, libc::CLONE_NEWNET))?;
        }
        for (from, to) in moves {
            if from == to {
                check(libc::fcntl(*to, libc::F_SETFD, 0))?;
            } else {
                // dup2 clears close-on-exec on the new descriptor.
                check(libc::dup2(*from, *to))?;
            }
        }
    }
    Ok(())
}

/// A program to start, with its stdout and stderr (`None`: /dev/null) and a clean
/// environment.
#[derive(Debug)]
pub struct Exec {
    pub program: std::path::PathBuf,
    pub args: Vec<std::ffi::OsString>,
    pub env: Vec<(String, String)>,
    pub cwd: std::path::PathBuf,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
}

impl Exec {
    fn command(&self) -> io::Result<Command> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .current_dir(&self.cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null());
        let stdio = |f: &Option<File>| -> io::Result<std::process::Stdio> {
            Ok(match f {
                Some(f) => f.try_clone()?.into(),
                None => std::process::Stdio::null(),
            })
        };
        cmd.stdout(stdio(&self.stdout)?)
            .stderr(stdio(&self.stderr)?);
        Ok(cmd)
    }
}

/// Starts `exec` confined as `confinement` says and returns its pid; the caller's reaper
/// collects its exit. The child gets PID, IPC and UTS namespaces of its own, as a container
/// does. With `cgroup_v2` it is created inside that cgroup (`clone3(CLONE_INTO_CGROUP)`,
/// Linux 5.7): nothing is migrated, so the start does not wait for the RCU grace period a
/// migration costs, and the child never runs a single instruction outside its limits;
/// otherwise it joins its cgroups before it executes anything. Kernels (or seccomp profiles)
/// without `clone3` get fork, in new IPC and UTS namespaces but the node's PID namespace.
pub fn spawn(
    exec: &Exec,
    confinement: Confinement,
    cgroup_v2: Option<&std::path::Path>,
) -> io::Result<u32> {
    let mut attempts = vec![cgroup_v2];
    if cgroup_v2.is_some() {
        attempts.push(None);
    }
    for into in attempts {
        match clone_confined(exec, &confinement, into)? {
            Some(pid) => return Ok(pid),
            None => tracing::debug!(
                "clone3 with namespaces{} is not available",
                if into.is_some() { " into a cgroup" } else { "" }
            ),
        }
    }
    tracing::warn!("clone3 is not available: the guest shares the node's PID namespace");
    let mut cmd = exec.command()?;
    let keep = confinement.apply(&mut cmd);
    let child = cmd.spawn()?;
    drop(keep);
    Ok(child.id())
}

/// `clone3` into new PID, IPC and UTS namespaces, and into the cgroup `into` when given
/// (otherwise the child writes itself into `confinement`'s `cgroup.procs` files); `Ok(None)`
/// when this kernel or its seccomp filter refuses the call itself (the caller falls back).
fn clone_confined(
    exec: &Exec,
    confinement: &Confinement,
    into: Option<&std::path::Path>,
) -> io::Result<Option<u32>> {
    use std::os::unix::ffi::OsStrExt;
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    // Everything the child touches is prepared here: after clone it may not allocate.
    let program = cstr(exec.program.as_os_str().as_bytes())?;
    let mut argv_owned = vec![program.clone()];
    for a in &exec.args {
        argv_owned.push(cstr(a.as_bytes())?);
    }
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let env_owned = exec
        .env
        .iter()
        .map(|(k, v)| cstr(format!("{k}={v}").as_bytes()))
        .collect::<io::Result<Vec<_>>>()?;
    let mut envp: Vec<*const libc::c_char> = env_owned.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let cwd = cstr(exec.cwd.as_os_str().as_bytes())?;
    let null = File::open("/dev/null")?;
    let stdout = match &exec.stdout {
        Some(f) => f.try_clone()?,
        None => null.try_clone()?,
    };
    let stderr = match &exec.stderr {
        Some(f) => f.try_clone()?,
        None => null.try_clone()?,
    };
    let mut moves: Vec<(i32, i32)> = vec![
        (null.as_raw_fd(), 0),
        (stdout.as_raw_fd(), 1),
        (stderr.as_raw_fd(), 2),
    ];
    moves.extend(confinement.fds.iter().map(|(f, to)| (f.as_raw_fd(), *to)));
    // dup2 onto 0/1/2 must not overwrite a source still to be moved: move everything to
    // high descriptors first (the child's copies are its own).
    let staged: Vec<OwnedFd> = moves
        .iter()
        .map(|(from, _)| {
            // SAFETY: F_DUPFD_CLOEXEC on an open descriptor returns a new one we own.
            let fd = unsafe { libc::fcntl(*from, libc::F_DUPFD_CLOEXEC, 100) };
            check(fd).map(|()| unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .collect::<io::Result<_>>()?;
    let moves: Vec<(i32, i32)> = staged
        .iter()
        .zip(&moves)
        .map(|(f, (_, to))| (f.as_raw_fd(), *to))
        .collect();
    let netns_fd = confinement.netns.as_ref().map(|f| f.as_raw_fd());
    let cgroup = into.map(File::open).transpose()?;
    let join: &[CString] = if into.is_some() {
        &[]
    } else {
        &confinement.cgroup_procs
    };
    // The child reports a failure before exec through this pipe (closed on exec: EOF = ok).
    let (report_read, report_write) = std::io::pipe()?;
    let report_fd = report_write.as_raw_fd();
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let namespaces = (libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) as u64;
    let args = CloneArgs {
        flags: namespaces
            | if cgroup.is_some() {
                CLONE_INTO_CGROUP
            } else {
                0
            },
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_ref().map_or(0, |c| c.as_raw_fd() as u64),
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM forks this process; the child branch below makes only
    // async-signal-safe system calls on data prepared above, then execs or exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: in the child, see above.
        unsafe {
            let empty: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            let result = if libc::chdir(cwd.as_ptr()) < 0 {
                Err(io::Error::last_os_error())
            } else {
                join_cgroups(join).and_then(|()| enter(netns_fd, &moves))
            };
            if result.is_ok() {
                libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            }
            let errno = result
                .err()
                .and_then(|e| e.raw_os_error())
                .unwrap_or_else(|| *libc::__errno_location());
            let bytes = errno.to_ne_bytes();
            libc::write(report_fd, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127);
        }
    }
    drop(report_write);
    if pid < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            // No clone3, no CLONE_INTO_CGROUP (E2BIG: a shorter struct), or a seccomp
            // filter that refuses clone3 (container runtimes answer ENOSYS or EPERM).
            Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EPERM) => Ok(None),
            _ => Err(e),
        };
    }
    let mut report = [0u8; 4];
    let mut read = 0;
    let mut r = report_read;
    while read < report.len() {
        match std::io::Read::read(&mut r, &mut report[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if read == report.len() {
        // The reaper collects the failed child's exit.
        return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(report)));
    }
    u32::try_from(pid)
        .map(Some)
        .map_err(|_| io::Error::from_raw_os_error(libc::ECHILD))
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

/// Gives this process a mount namespace of its own: nothing mounted in it propagates back to
/// the node, while the node's unmounts (other pods' volumes) still propagate into it, so it
/// pins none of them. Call while the process is single-threaded (unshare of the mount
/// namespace refuses a process sharing its file system context with threads).
pub fn private_mount_namespace() -> io::Result<()> {
    let root = CString::new("/").map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let none = CString::new("none").map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain system calls on NUL-terminated strings that outlive them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            none.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ))?;
    }
    Ok(())
}

/// Moves this process (in its [`private_mount_namespace`]) into a root of its own, as a
/// container's: `/` becomes a small read-only tmpfs (mounted over `new_root`) holding only `/proc` (this
/// PID namespace's) and each `(source, target)` file bind-mounted read-only at `target` (the
/// pod's `/etc/hosts` and `/etc/resolv.conf`, so names resolve as in the pod). Nothing of the
/// node's file system stays reachable by path; what the guest was granted is open already
/// (`/proc/self/fd/N`). Call before dropping privileges.
pub fn enter_root(
    new_root: &std::path::Path,
    files: &[(std::path::PathBuf, &str)],
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let cstr = |s: &[u8]| CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    let path = |p: &std::path::Path| cstr(p.as_os_str().as_bytes());
    let root = cstr(b"/")?;
    let dot = cstr(b".")?;
    let none = cstr(b"none")?;
    let tmpfs = cstr(b"tmpfs")?;
    let proc_ = cstr(b"proc")?;
    let options = cstr(b"size=256k,nr_inodes=64,mode=0555")?;
    let target_root = path(new_root)?;
    let hardened = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: plain system calls on NUL-terminated strings that outlive them.
    unsafe {
        check(libc::mount(
            tmpfs.as_ptr(),
            target_root.as_ptr(),
            tmpfs.as_ptr(),
            hardened,
            options.as_ptr().cast(),
        ))?;
    }
    std::fs::create_dir(new_root.join("proc"))?;
    let proc_dir = path(&new_root.join("proc"))?;
    // SAFETY: as above.
    unsafe {
        check(libc::mount(
            proc_.as_ptr(),
            proc_dir.as_ptr(),
            proc_.as_ptr(),
            hardened,
            std::ptr::null(),
        ))?;
    }
    for (source, target) in files {
        let inside = new_root.join(target.trim_start_matches('/'));
        if let Some(parent) = inside.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::File::create(&inside)?;
        let source = path(source)?;
        let inside = path(&inside)?;
        // SAFETY: as above.
        unsafe {
            check(libc::mount(
                source.as_ptr(),
                inside.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                none.as_ptr(),
                inside.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | hardened,
                std::ptr::null(),
            ))?;
        }
    }
    // SAFETY: as above; pivot_root(".", ".") stacks the old root under the new one, and the
    // detach then drops it (runc does the same).
    unsafe {
        check(libc::chdir(target_root.as_ptr()))?;
        check(libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int)?;
        check(libc::umount2(dot.as_ptr(), libc::MNT_DETACH))?;
        check(libc::chdir(root.as_ptr()))?;
        check(libc::mount(
            none.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY | hardened,
            std::ptr::null(),
        ))?;
    }
    Ok(())
}

/// Makes SIGTERM end this process at once (status 143) until [`default_sigterm`]. The guest
/// is PID 1 of its namespace, and the kernel drops signals PID 1 has no handler for: without
/// this, a SIGTERM before the guest starts (its own handler comes with the async runtime)
/// would be lost.
pub fn exit_on_sigterm() -> io::Result<()> {
    extern "C" fn exit_143(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(143) }
    }
    // SAFETY: installs a handler that only calls _exit.
    let previous =
        unsafe { libc::signal(libc::SIGTERM, exit_143 as *const () as libc::sighandler_t) };
    if previous == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Restores SIGTERM's default disposition (before the async runtime installs its handler,
/// which would otherwise chain to [`exit_on_sigterm`]'s).
pub fn default_sigterm() {
    // SAFETY: resets a disposition.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
    }
}

/// Attaches `image` to a free loop device that the kernel detaches by itself once the last
/// user (the mount) is gone, and mounts it as ext4 over `dir` (nosuid, nodev, noexec,
/// noatime). Call as root in a private mount namespace. Where the node's `/dev` lacks the
/// device node the kernel picked (a container's copy of `/dev`, as on kind nodes), a node of
/// this process's own is made on a scratch tmpfs over `scratch` and dropped after use.
pub fn mount_loop(
    image: &File,
    dir: &std::path::Path,
    scratch: &std::path::Path,
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    const LOOP_SET_FD: libc::c_ulong = 0x4C00;
    const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
    const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
    const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
    const LO_FLAGS_AUTOCLEAR: u32 = 4;
    #[repr(C)]
    struct LoopInfo64 {
        device: u64,
        inode: u64,
        rdevice: u64,
        offset: u64,
        sizelimit: u64,
        number: u32,
        encrypt_type: u32,
        encrypt_key_size: u32,
        flags: u32,
        file_name: [u8; 64],
        crypt_name: [u8; 64],
        encrypt_key: [u8; 32],
        init: [u64; 2],
    }
    #[repr(C)]
    struct LoopConfig {
        fd: u32,
        block_size: u32,
        info: LoopInfo64,
        reserved: [u64; 8],
    }
    let info = || LoopInfo64 {
        device: 0,
        inode: 0,
        rdevice: 0,
        offset: 0,
        sizelimit: 0,
        number: 0,
        encrypt_type: 0,
        encrypt_key_size: 0,
        flags: LO_FLAGS_AUTOCLEAR,
        file_name: [0; 64],
        crypt_name: [0; 64],
        encrypt_key: [0; 32],
        init: [0; 2],
    };
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    let mut scratch_mounted = false;
    let result = (|| -> io::Result<()> {
        for _attempt in 0..16 {
            // SAFETY: an ioctl without arguments on the control device.
            let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            check(n)?;
            let node = std::path::PathBuf::from(format!("/dev/loop{n}"));
            let device = match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&node)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !scratch_mounted {
                        let target = cstr(scratch.as_os_str().as_bytes())?;
                        let tmpfs = cstr(b"tmpfs")?;
                        // SAFETY: mounts a small tmpfs (device nodes allowed) on `scratch`.
                        check(unsafe {
                            libc::mount(
                                tmpfs.as_ptr(),
                                target.as_ptr(),
                                tmpfs.as_ptr(),
                                libc::MS_NOSUID | libc::MS_NOEXEC,
                                c"size=16k,mode=0700".as_ptr().cast(),
                            )
                        })?;
                        scratch_mounted = true;
                    }
                    let own = scratch.join(format!("loop{n}"));
                    let path = cstr(own.as_os_str().as_bytes())?;
                    // SAFETY: makes a block device node for loop device n (major 7).
                    let made = unsafe {
                        libc::mknod(
                            path.as_ptr(),
                            libc::S_IFBLK | 0o600,
                            libc::makedev(7, n as u32),
                        )
                    };
                    if made < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                        return Err(io::Error::last_os_error());
                    }
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&own)?
                }
                Err(e) => return Err(e),
            };
            let config = LoopConfig {
                fd: image.as_raw_fd() as u32,
                block_size: 0,
                info: info(),
                reserved: [0; 8],
            };
            // SAFETY: LOOP_CONFIGURE reads the struct above.
            let mut rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) };
            if rc < 0
                && matches!(
                    io::Error::last_os_error().raw_os_error(),
                    Some(libc::EINVAL | libc::ENOTTY)
                )
            {
                // Kernels before 5.8: attach, then set the flags.
                // SAFETY: LOOP_SET_FD takes the backing descriptor; SET_STATUS64 reads `info`.
                rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_FD, image.as_raw_fd()) };
                if rc == 0 {
                    let status = info();
                    rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_STATUS64, &status) };
                }
            }
            if rc < 0 {
                // Another process took this device between the two calls: ask again.
                if io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) {
                    continue;
                }
                return Err(io::Error::last_os_error());
            }
            let source = cstr(format!("/proc/self/fd/{}", device.as_raw_fd()).as_bytes())?;
            let target = cstr(dir.as_os_str().as_bytes())?;
            let ext4 = cstr(b"ext4")?;
            // SAFETY: mounts the attached device; the path resolves to its open node.
            check(unsafe {
                libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    ext4.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_NOATIME,
                    std::ptr::null(),
                )
            })?;
            // The mount holds the device now; closing ours lets autoclear act at unmount.
            return Ok(());
        }
        Err(io::Error::other("no free loop device after 16 attempts"))
    })();
    if scratch_mounted {
        let target = cstr(scratch.as_os_str().as_bytes())?;
        // SAFETY: detaches the scratch tmpfs mounted above.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
    result
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// The node's cgroup v2 mount (a hybrid node has one without controllers), or `None`.
    fn v2_mount() -> Option<PathBuf> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
    }

    /// A v2 cgroup for one test, removed on drop.
    struct TestCgroup(PathBuf);
    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    fn wait(pid: u32) -> i32 {
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        status
    }

    fn no_confinement() -> Confinement {
        Confinement {
            cgroup_procs: vec![],
            netns: None,
            fds: vec![],
        }
    }

    fn exec(program: &str, args: &[&str]) -> Exec {
        Exec {
            program: program.into(),
            args: args.iter().map(Into::into).collect(),
            env: vec![("A".into(), "1".into())],
            cwd: "/".into(),
            stdout: None,
            stderr: None,
        }
    }

    fn events(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default()
    }

    #[test]
    fn a_child_is_created_inside_its_v2_cgroup_and_the_cgroup_reports_it() {
        let Some(mount) = v2_mount() else {
            eprintln!(
                "no cgroup2 mount on this machine: clone3(CLONE_INTO_CGROUP) is not exercised"
            );
            return;
        };
        let name = format!("wa8s-clone-test-{}", std::process::id());
        let cg = TestCgroup(mount.join(&name));
        std::fs::create_dir(&cg.0).expect("a v2 cgroup (needs root)");
        assert!(events(&cg.0).contains("populated 0"), "{}", events(&cg.0));
        let pid =
            spawn(&exec("/bin/sleep", &["30"]), no_confinement(), Some(&cg.0)).expect("spawned");
        let procs = std::fs::read_to_string(cg.0.join("cgroup.procs")).expect("procs");
        let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        let populated = events(&cg.0);
        kill(pid, libc::SIGKILL).expect("kill");
        wait(pid);
        assert_eq!(
            procs.trim(),
            pid.to_string(),
            "the child is the cgroup's only process"
        );
        assert!(
            membership
                .lines()
                .any(|l| l.starts_with("0::") && l.ends_with(&name)),
            "{membership}"
        );
        assert!(populated.contains("populated 1"), "{populated}");
        assert!(events(&cg.0).contains("populated 0"), "{}", events(&cg.0));
    }

    #[test]
    fn a_child_that_cannot_exec_reports_why() {
        let Some(mount) = v2_mount() else {
            eprintln!(
                "no cgroup2 mount on this machine: clone3(CLONE_INTO_CGROUP) is not exercised"
            );
            return;
        };
        let cg = TestCgroup(mount.join(format!("wa8s-clone-fail-{}", std::process::id())));
        std::fs::create_dir(&cg.0).expect("a v2 cgroup (needs root)");
        let err = spawn(
            &exec("/nonexistent/wa8s-guest", &[]),
            no_confinement(),
            Some(&cg.0),
        )
        .expect_err("no such program");
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        // The failed child has exited by itself (it stays a zombie of this test binary).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !events(&cg.0).contains("populated 0") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(events(&cg.0).contains("populated 0"), "{}", events(&cg.0));
    }
}
