//! Seccomp for the guest process: the container's own profile (the OCI spec's, usually the
//! CRI's RuntimeDefault), and on top of it a wa8s allowlist of just the system calls a
//! Wasmtime guest process makes, found by tracing the guest under every kind of guest and
//! grant (`docs/security.md` has the method). Filters stack in the kernel, and the strictest
//! answer wins, so the wa8s list can only narrow the container's profile.
//!
//! Outside the list, a call fails with ENOSYS (libraries then fall back, as glibc does from
//! clone3 to clone), except the calls that only an attacker who took over the process would
//! make — mounts, namespaces, ptrace, module loading, exec — which kill the process.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use syscalls::Sysno;

/// Why a profile cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the seccomp profile uses {0}, which the wa8s runtime does not support")]
    Unsupported(String),
    #[error("compiling the seccomp profile: {0}")]
    Compile(#[from] seccompiler::BackendError),
    #[error("applying a seccomp filter: {0}")]
    Apply(#[source] seccompiler::Error),
}

/// Compiled filters, applied in order.
#[derive(Debug, Clone, Default)]
pub struct Filters(Vec<BpfProgram>);

/// What a Wasmtime guest process calls after it has dropped its privileges: memory
/// (including Wasmtime's memfd images), threads and their synchronisation, signals (Wasm traps
/// arrive as signals), time, randomness, files under granted directories (cap-std resolves
/// paths with openat2), polling, and client sockets (name lookups read the pod's files and
/// ask its DNS server; glibc checks interfaces over route netlink).
const ALLOWED: &[&str] = &[
    // memory
    "mmap",
    "munmap",
    "mprotect",
    "mremap",
    "madvise",
    "brk",
    "memfd_create",
    "membarrier",
    "mincore",
    "msync",
    // threads (clone is checked below: threads only, no new processes)
    "futex",
    "futex_waitv",
    "set_robust_list",
    "get_robust_list",
    "rseq",
    "set_tid_address",
    "gettid",
    "getpid",
    "getppid",
    "sched_yield",
    "sched_getaffinity",
    "prctl",
    "arch_prctl",
    "exit",
    "exit_group",
    "tgkill",
    "tkill",
    // signals
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    "restart_syscall",
    // time and randomness
    "clock_gettime",
    "clock_getres",
    "clock_nanosleep",
    "nanosleep",
    "gettimeofday",
    "time",
    "getrandom",
    // more filters (only ever narrower): the container's profile goes on after these
    "seccomp",
    // identity and limits (read)
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getgroups",
    "getresuid",
    "getresgid",
    "uname",
    "sysinfo",
    "getrlimit",
    "prlimit64",
    "getcpu",
    // files
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "open",
    "openat",
    "openat2",
    "close",
    "close_range",
    "lseek",
    "fstat",
    "newfstatat",
    "statx",
    "stat",
    "lstat",
    "fstatfs",
    "statfs",
    "getdents64",
    "mkdirat",
    "unlinkat",
    "renameat",
    "renameat2",
    "linkat",
    "symlinkat",
    "readlink",
    "readlinkat",
    "access",
    "faccessat",
    "faccessat2",
    "fcntl",
    "ioctl",
    "dup",
    "dup2",
    "dup3",
    "pipe2",
    "fsync",
    "fdatasync",
    "ftruncate",
    "fallocate",
    "utimensat",
    "fadvise64",
    "flock",
    "getcwd",
    "chdir",
    "fchdir",
    "copy_file_range",
    "sendfile",
    // polling
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "eventfd2",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_gettime",
    // sockets: clients and the server's accepted connections (the server's own socket listens
    // before the filter goes on; a guest's `listen` gets ENOSYS)
    "socket",
    "socketpair",
    "connect",
    "bind",
    "accept",
    "accept4",
    "getsockname",
    "getpeername",
    "setsockopt",
    "getsockopt",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    "shutdown",
];

/// Calls that kill the process: none is needed to run a guest, each is a step of a breakout,
/// and no WASI import can make the host call one (a call a guest can cause, such as `listen`
/// through wasi:sockets, must fail in that guest, not end the process and its other requests).
const KILLED: &[&str] = &[
    "execve",
    "execveat",
    "fork",
    "vfork",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "bpf",
    "perf_event_open",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    "iopl",
    "ioperm",
    "reboot",
    "swapon",
    "swapoff",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "acct",
    "quotactl",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setgroups",
    "setfsuid",
    "setfsgid",
    "capset",
];

fn arch() -> TargetArch {
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
    #[cfg(target_arch = "riscv64")]
    return TargetArch::riscv64;
    #[cfg(target_arch = "x86_64")]
    return TargetArch::x86_64;
}

/// This architecture's number for `name`, if it has the call.
fn number(name: &str) -> Option<i64> {
    Sysno::from_str(name).ok().map(|s| i64::from(s.id()))
}

fn unconditional(names: &[&str]) -> BTreeMap<i64, Vec<SeccompRule>> {
    names
        .iter()
        .filter_map(|n| number(n))
        .map(|n| (n, Vec::new()))
        .collect()
}

impl Filters {
    /// The wa8s allowlist.
    pub fn wa8s() -> Result<Self, Error> {
        let mut allowed = unconditional(ALLOWED);
        // clone only for threads: CLONE_THREAD set. clone3 passes its flags in memory the
        // filter cannot read, so it gets ENOSYS and glibc uses clone.
        if let Some(clone) = number("clone") {
            let thread = libc::CLONE_THREAD as u64;
            allowed.insert(
                clone,
                vec![SeccompRule::new(vec![SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(thread),
                    thread,
                )?])?],
            );
        }
        let allow = SeccompFilter::new(
            allowed,
            SeccompAction::Errno(libc::ENOSYS as u32),
            SeccompAction::Allow,
            arch(),
        )?;
        let kill = SeccompFilter::new(
            unconditional(KILLED),
            SeccompAction::Allow,
            SeccompAction::KillProcess,
            arch(),
        )?;
        // Installed in this order: each filter must still allow `seccomp` for the next.
        Ok(Filters(vec![kill.try_into()?, allow.try_into()?]))
    }

    /// The container's profile from its OCI spec. Rules are grouped by action, one filter
    /// each, over a filter that allows what the profile allows and answers the rest with its
    /// default action.
    pub fn oci(profile: &LinuxSeccomp) -> Result<Self, Error> {
        let default = action(profile.default_action(), profile.default_errno_ret())?;
        // Per action: conditional rules by call, and the calls matched unconditionally.
        type Group = (BTreeMap<i64, Vec<SeccompRule>>, BTreeSet<i64>);
        let mut groups: Vec<(SeccompAction, Group)> = Vec::new();
        for rule in profile.syscalls().iter().flatten() {
            let act = action(rule.action(), rule.errno_ret())?;
            let conditions = rule
                .args()
                .iter()
                .flatten()
                .map(|a| {
                    let index = u8::try_from(a.index())
                        .map_err(|_| Error::Unsupported(format!("argument index {}", a.index())))?;
                    let (op, value) = match a.op() {
                        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
                        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
                        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
                        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
                        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
                        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
                        LinuxSeccompOperator::ScmpCmpMaskedEq => (
                            SeccompCmpOp::MaskedEq(a.value()),
                            a.value_two().unwrap_or(0),
                        ),
                    };
                    Ok(SeccompCondition::new(
                        index,
                        SeccompCmpArgLen::Qword,
                        op,
                        value,
                    )?)
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let i = match groups.iter().position(|(a, _)| *a == act) {
                Some(i) => i,
                None => {
                    groups.push((act, Group::default()));
                    groups.len() - 1
                }
            };
            let (conditional, always) = &mut groups[i].1;
            // Names this architecture lacks are skipped, as runc does.
            for n in rule.names().iter().filter_map(|n| number(n)) {
                if conditions.is_empty() {
                    always.insert(n);
                } else {
                    conditional
                        .entry(n)
                        .or_default()
                        .push(SeccompRule::new(conditions.clone())?);
                }
            }
        }
        // A call matched unconditionally needs no conditions (an empty list means that).
        let merged = |(mut conditional, always): Group| {
            for n in always {
                conditional.insert(n, Vec::new());
            }
            conditional
        };
        // A call another action takes unconditionally passes the default filter, so that
        // action (say ENOSYS for clone3) is the answer rather than the default's.
        let decided: BTreeSet<i64> = groups
            .iter()
            .filter(|(a, _)| *a != SeccompAction::Allow)
            .flat_map(|(_, (_, always))| always.iter().copied())
            .collect();
        let mut allowed = BTreeMap::new();
        let mut others = Vec::new();
        for (act, group) in groups {
            if act == SeccompAction::Allow {
                allowed = merged(group);
            } else {
                others.push((act, merged(group)));
            }
        }
        for n in decided {
            allowed.insert(n, Vec::new());
        }
        let mut filters = Vec::new();
        for (act, rules) in others {
            filters.push(SeccompFilter::new(rules, SeccompAction::Allow, act, arch())?.try_into()?);
        }
        // Last: it may refuse `seccomp` itself, and nothing can be installed after it.
        filters
            .push(SeccompFilter::new(allowed, default, SeccompAction::Allow, arch())?.try_into()?);
        Ok(Filters(filters))
    }

    /// Installs the filters on the calling thread (and the threads it makes later). Needs
    /// `no_new_privs`.
    pub fn apply(&self) -> Result<(), Error> {
        for f in &self.0 {
            seccompiler::apply_filter(f).map_err(Error::Apply)?;
        }
        Ok(())
    }
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, Error> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        LinuxSeccompAction::ScmpActNotify => {
            return Err(Error::Unsupported("SCMP_ACT_NOTIFY".into()));
        }
    })
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    /// Runs `body` in a forked child under `filters` (with `no_new_privs`), returning how the
    /// child ended: `Ok(exit status)` or `Err(signal)`.
    fn in_child(filters: &Filters, body: fn() -> i32) -> Result<i32, i32> {
        // SAFETY: the child only makes system calls (the filters are compiled already) and
        // leaves with _exit; the parent waits for it.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0, "fork");
            if pid == 0 {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if filters.apply().is_err() {
                    libc::_exit(100);
                }
                libc::_exit(body());
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            if libc::WIFSIGNALED(status) {
                Err(libc::WTERMSIG(status))
            } else {
                Ok(libc::WEXITSTATUS(status))
            }
        }
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn under_the_wa8s_allowlist_a_breakout_call_kills_the_process() {
        let wa8s = Filters::wa8s().expect("compiles");
        // Allowed calls work.
        assert_eq!(
            in_child(&wa8s, || unsafe { (libc::getpid() > 0) as i32 }),
            Ok(1)
        );
        // unshare would be a step out of the container: the process is killed (SIGSYS).
        assert_eq!(
            in_child(&wa8s, || unsafe { libc::unshare(libc::CLONE_NEWNS) }),
            Err(libc::SIGSYS)
        );
        assert_eq!(
            in_child(&wa8s, || unsafe {
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) as i32
            }),
            Err(libc::SIGSYS)
        );
    }

    #[test]
    fn under_the_wa8s_allowlist_other_calls_fail_with_enosys_and_threads_still_start() {
        let wa8s = Filters::wa8s().expect("compiles");
        assert_eq!(
            in_child(&wa8s, || unsafe {
                let name = b"x";
                if libc::sethostname(name.as_ptr().cast(), 1) == -1 {
                    errno()
                } else {
                    0
                }
            }),
            Ok(libc::ENOSYS)
        );
        // A guest can make the host listen (wasi:sockets): that fails in the guest, it does
        // not end the process.
        assert_eq!(
            in_child(&wa8s, || unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                if libc::listen(fd, 1) == -1 {
                    errno()
                } else {
                    0
                }
            }),
            Ok(libc::ENOSYS)
        );
        // A new process is refused (fork is a clone without CLONE_THREAD): ENOSYS.
        assert_eq!(
            in_child(&wa8s, || unsafe {
                let pid = libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0);
                if pid == -1 { errno() } else { 0 }
            }),
            Ok(libc::ENOSYS)
        );
        // Threads start (glibc falls back from clone3 to clone with CLONE_THREAD).
        assert_eq!(
            in_child(&wa8s, || { std::thread::spawn(|| 7).join().unwrap_or(0) }),
            Ok(7)
        );
    }

    #[test]
    fn a_container_profile_is_applied_with_its_default_action_and_argument_rules() {
        let profile: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "syscalls": [
                {"names": ["exit", "exit_group", "getpid", "write", "rt_sigreturn"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0xffffffff_u64, "op": "SCMP_CMP_EQ"}]},
                {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["not_a_real_call"], "action": "SCMP_ACT_ALLOW"}
            ]
        }))
        .expect("profile");
        let filters = Filters::oci(&profile).expect("compiles");
        assert_eq!(
            in_child(&filters, || unsafe { (libc::getpid() > 0) as i32 }),
            Ok(1)
        );
        // Not listed: the default action (EPERM).
        assert_eq!(
            in_child(&filters, || unsafe {
                if libc::syscall(libc::SYS_getuid) == -1 {
                    errno()
                } else {
                    0
                }
            }),
            Ok(libc::EPERM)
        );
        assert_eq!(
            in_child(&filters, || unsafe {
                if libc::syscall(libc::SYS_getppid) == -1 {
                    errno()
                } else {
                    0
                }
            }),
            Ok(libc::ENOSYS)
        );
        // personality(0xffffffff) (a query) matches the argument rule; another value does not.
        assert_eq!(
            in_child(&filters, || unsafe {
                (libc::syscall(libc::SYS_personality, 0xffff_ffff_u64) != -1) as i32
            }),
            Ok(1)
        );
        assert_eq!(
            in_child(&filters, || unsafe {
                if libc::syscall(libc::SYS_personality, 0) == -1 {
                    errno()
                } else {
                    0
                }
            }),
            Ok(libc::EPERM)
        );
    }

    #[test]
    fn a_profile_asking_for_a_user_space_notifier_is_refused_by_name() {
        let profile: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_NOTIFY",
        }))
        .expect("profile");
        let err = Filters::oci(&profile).expect_err("refused");
        assert!(err.to_string().contains("SCMP_ACT_NOTIFY"), "{err}");
    }
}
