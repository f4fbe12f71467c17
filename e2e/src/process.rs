//! Starting and stopping the harness's processes, always by PID.
//!
//! Processes that belong to a test run are started *attached*: from one long-lived keeper
//! thread with `PR_SET_PDEATHSIG`, so the kernel kills them when the test process exits, even
//! if it panics or is killed. Processes of `wa8s-cluster up` are started *detached* (their own
//! process group, outliving the command) and stopped later from their pid files.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How a process relates to the harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Dies with the process that started it.
    Attached,
    /// Outlives it; stopped explicitly by PID.
    Detached,
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<u32>>);

/// Starts `cmd` with its stdout and stderr appended to `log`, returning its PID.
pub fn spawn(mut cmd: Command, log: &Path, lifetime: Lifetime) -> io::Result<u32> {
    let out = File::options().create(true).append(true).open(log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0);
    match lifetime {
        Lifetime::Detached => cmd.spawn().map(|c| c.id()),
        Lifetime::Attached => {
            let (reply, answer) = mpsc::channel();
            keeper()
                .lock()
                .map_err(|_| io::Error::other("process keeper poisoned"))?
                .send((cmd, reply))
                .map_err(|_| io::Error::other("process keeper gone"))?;
            answer
                .recv()
                .map_err(|_| io::Error::other("process keeper gone"))?
        }
    }
}

/// The keeper thread: the parent (for `PR_SET_PDEATHSIG`'s purposes) of every attached
/// process. It must never exit before the process does, or its children would die with it.
fn keeper() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("wa8s-e2e-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    die_with_parent(&mut cmd);
                    let _ = reply.send(cmd.spawn().map(|c| c.id()));
                }
                // The sender lives in a static, so this is only reached at process exit.
                loop {
                    std::thread::park();
                }
            })
            .map(drop)
            .unwrap_or_else(|e| panic!("cannot start the process keeper thread: {e}"));
        Mutex::new(tx)
    })
}

#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe, as pre_exec requires; nothing is
    // allocated between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Whether `pid` is running (not a zombie), and, when `exe` is given, runs that executable
/// (a recycled PID must never be killed by mistake).
pub fn is_running(pid: u32, exe: Option<&Path>) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // The state is the first field after the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    match exe {
        None => true,
        Some(want) => std::fs::read_link(proc_dir.join("exe"))
            .map(|got| same_file(&got, want))
            .unwrap_or(false),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    // A replaced binary shows as "/path (deleted)".
    let a = a
        .to_string_lossy()
        .trim_end_matches(" (deleted)")
        .to_owned();
    canon(Path::new(&a)) == canon(b)
}

/// Stops `pid`: SIGTERM, up to `grace` to exit, then SIGKILL. Reaps it if it is our child.
/// Does nothing when the PID is gone or (with `exe`) now runs something else.
pub fn terminate(pid: u32, exe: Option<&Path>, grace: Duration) {
    if !is_running(pid, exe) {
        reap(pid);
        return;
    }
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return;
    };
    let gone = || {
        reap(pid);
        (!is_running(pid, None)).then_some(())
    };
    signal(raw, libc::SIGTERM);
    if eventually(grace, Duration::from_millis(50), gone).is_none() {
        signal(raw, libc::SIGKILL);
        let _ = eventually(Duration::from_secs(5), Duration::from_millis(20), gone);
    }
}

#[allow(unsafe_code)]
fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

#[allow(unsafe_code)]
fn reap(pid: u32) {
    if let Ok(raw) = libc::pid_t::try_from(pid) {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG on a specific PID only writes `status`; it fails with
        // ECHILD harmlessly when the PID is not our child.
        unsafe {
            libc::waitpid(raw, &mut status, libc::WNOHANG);
        }
    }
}

/// Polls `check` every `interval` until it yields a value or `timeout` passes. Every wait in
/// the harness goes through here, so none of them can hang.
pub fn eventually<T>(
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// Runs `cmd` to completion with a deadline, capturing its output. A command still running
/// at the deadline is killed and reported as timed out.
pub fn run_with_timeout(cmd: Command, timeout: Duration) -> io::Result<std::process::Output> {
    run_with_input(cmd, None, timeout)
}

/// [`run_with_timeout`], feeding `input` to the command's stdin.
pub fn run_with_input(
    mut cmd: Command,
    input: Option<Vec<u8>>,
    timeout: Duration,
) -> io::Result<std::process::Output> {
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Drain the pipes on threads so a chatty command cannot block on a full pipe.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_t = std::thread::spawn(move || read_all(stdout.as_mut()));
    let err_t = std::thread::spawn(move || read_all(stderr.as_mut()));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&input);
        });
    }
    let finished = eventually(timeout, Duration::from_millis(10), || {
        child.try_wait().transpose()
    });
    let status = match finished {
        Some(status) => status?,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{cmd:?} did not finish within {timeout:?}"),
            ));
        }
    };
    Ok(std::process::Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

fn read_all(r: Option<&mut impl io::Read>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(r) = r {
        let _ = r.read_to_end(&mut buf);
    }
    buf
}
