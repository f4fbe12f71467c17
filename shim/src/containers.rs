//! The pod's containers and the phase each is in. Every phase change is a method of [`Phase`]
//! that refuses what the current phase does not allow; the task service changes phases only
//! through the table here, so the rules live (and are tested) in one place.
//!
//! | from \ asked | start    | started | exited | kill           | delete   |
//! |--------------|----------|---------|--------|----------------|----------|
//! | Created      | Starting | refused | Exited | signal         | Deleting |
//! | Starting     | refused  | Running | Exited | signal         | refused  |
//! | Running      | refused  | refused | Exited | signal         | refused  |
//! | Exited       | refused  | refused | refused| nothing to do  | Deleting |
//! | Deleting     | refused  | refused | refused| refused        | refused  |

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::cgroup::{Cgroup, Stats};
use crate::spec::Kind;

/// Errors of the table: the container named is not there, or not in a phase that allows
/// what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {0} already exists")]
    AlreadyExists(String),
    #[error("container {id}: {source}")]
    Refused {
        id: String,
        #[source]
        source: Refused,
    },
}

/// How a container's process ended, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: u32,
    pub at: SystemTime,
}

impl Exit {
    pub fn now(code: u32) -> Self {
        Exit {
            code,
            at: SystemTime::now(),
        }
    }
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Set up; an app container's guest has loaded its component and waits for the start
    /// signal.
    Created,
    /// Start was asked and is being carried out.
    Starting,
    Running,
    Exited(Exit),
    /// Delete was asked; what the container held is being released.
    Deleting,
}

/// A phase change the container's phase does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("it is {phase} and cannot be {action}")]
pub struct Refused {
    pub phase: &'static str,
    pub action: &'static str,
}

/// What a kill reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The container's process (or, for a sandbox, its bookkeeping) is live.
    Live,
    /// It has exited already: containerd may kill again, and that is not an error.
    AlreadyExited,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Created => "created",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Exited(_) => "exited",
            Phase::Deleting => "being deleted",
        }
    }

    fn refuse(&self, action: &'static str) -> Refused {
        Refused {
            phase: self.name(),
            action,
        }
    }

    /// Created → Starting.
    pub fn start(&mut self) -> Result<(), Refused> {
        match self {
            Phase::Created => {
                *self = Phase::Starting;
                Ok(())
            }
            _ => Err(self.refuse("started")),
        }
    }

    /// Starting → Running, once the guest has been told to start.
    pub fn started(&mut self) -> Result<(), Refused> {
        match self {
            Phase::Starting => {
                *self = Phase::Running;
                Ok(())
            }
            _ => Err(self.refuse("marked running")),
        }
    }

    /// Created, Starting or Running → Exited: the process ended (or a sandbox was stopped).
    pub fn exited(&mut self, exit: Exit) -> Result<(), Refused> {
        match self {
            Phase::Created | Phase::Starting | Phase::Running => {
                *self = Phase::Exited(exit);
                Ok(())
            }
            _ => Err(self.refuse("marked exited")),
        }
    }

    /// Whether a kill has anything to reach; the phase itself changes when the exit comes.
    pub fn kill(&self) -> Result<Reach, Refused> {
        match self {
            Phase::Created | Phase::Starting | Phase::Running => Ok(Reach::Live),
            Phase::Exited(_) => Ok(Reach::AlreadyExited),
            Phase::Deleting => Err(self.refuse("killed")),
        }
    }

    /// Created or Exited → Deleting. A running container must be killed first.
    pub fn delete(&mut self) -> Result<(), Refused> {
        match self {
            Phase::Created | Phase::Exited(_) => {
                *self = Phase::Deleting;
                Ok(())
            }
            _ => Err(self.refuse("deleted")),
        }
    }

    /// Whether the container's process may still be there.
    pub fn is_live(&self) -> bool {
        matches!(self, Phase::Created | Phase::Starting | Phase::Running)
    }
}

/// What a container holds on the node besides its process, released at delete.
#[derive(Debug, Default)]
pub struct Resources {
    pub cgroup: Option<Cgroup>,
    /// The root filesystem the shim mounted.
    pub rootfs: Option<PathBuf>,
}

impl Resources {
    /// Releases everything; failures are logged, since there is nobody left to tell.
    pub fn release(&self) {
        if let Some(rootfs) = &self.rootfs
            && let Err(e) = containerd_shim::mount::umount_recursive(rootfs.to_str(), 0)
        {
            tracing::warn!("unmounting {}: {e}", rootfs.display());
        }
        if let Some(cg) = &self.cgroup
            && let Err(e) = cg.remove()
        {
            tracing::warn!("removing the cgroup: {e}");
        }
    }
}

/// The paths containerd gave for a container's stdio.
#[derive(Debug, Clone, Default)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug)]
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub kind: Kind,
    pub stdio: Stdio,
    /// The network namespace of a sandbox (`None`: the host's, for `hostNetwork` pods).
    pub netns: Option<PathBuf>,
    /// The guest process (app containers).
    pub pid: Option<u32>,
    /// Write end of the guest's start pipe, until start.
    start: Option<std::fs::File>,
    resources: Resources,
    phase: Phase,
    /// Holds the exit once there is one, for every Wait.
    exits: watch::Sender<Option<Exit>>,
}

impl Container {
    /// A sandbox: nothing runs, the phases are bookkeeping.
    pub fn sandbox(id: String, bundle: PathBuf, stdio: Stdio, netns: Option<PathBuf>) -> Self {
        Container::new(id, bundle, Kind::Sandbox, stdio, netns)
    }

    /// An app container whose guest `pid` waits for the start signal on `start`.
    pub fn app(
        id: String,
        bundle: PathBuf,
        stdio: Stdio,
        pid: u32,
        start: std::fs::File,
        resources: Resources,
    ) -> Self {
        let mut c = Container::new(id, bundle, Kind::App, stdio, None);
        c.pid = Some(pid);
        c.start = Some(start);
        c.resources = resources;
        c
    }

    fn new(id: String, bundle: PathBuf, kind: Kind, stdio: Stdio, netns: Option<PathBuf>) -> Self {
        Container {
            id,
            bundle,
            kind,
            stdio,
            netns,
            pid: None,
            start: None,
            resources: Resources::default(),
            phase: Phase::Created,
            exits: watch::channel(None).0,
        }
    }

    /// The pid containerd is told: the guest's, or the shim's for a sandbox.
    fn task_pid(&self) -> u32 {
        self.pid.unwrap_or_else(std::process::id)
    }

    /// Records an exit the phase has accepted.
    fn record_exit(&mut self, exit: Exit) -> ExitEvent {
        self.start = None;
        // send_replace stores the exit even when no Wait is listening yet (send would drop
        // it, and a later Wait would block forever).
        self.exits.send_replace(Some(exit));
        ExitEvent {
            id: self.id.clone(),
            pid: self.task_pid(),
            exit,
            oom: self
                .resources
                .cgroup
                .as_ref()
                .is_some_and(|cg| cg.stats().oom_kills > 0),
        }
    }
}

/// An exit to tell containerd about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitEvent {
    pub id: String,
    pub pid: u32,
    pub exit: Exit,
    /// The container's cgroup has seen an OOM kill.
    pub oom: bool,
}

/// What a start hands over to be carried out outside the table's lock.
#[derive(Debug)]
pub struct Starting {
    pub pid: u32,
    /// The guest's start pipe (app containers).
    pub signal: Option<std::fs::File>,
}

/// What a kill is to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Kill {
    /// Nothing: the container has exited already.
    Nothing,
    /// Signal the guest process.
    Signal(u32),
    /// A sandbox, stopped by bookkeeping alone: tell containerd of its exit.
    Stopped(ExitEvent),
}

/// A container taken out of service by delete.
#[derive(Debug)]
pub struct Deleted {
    pub pid: u32,
    pub exit: Exit,
    /// To release before the container is removed.
    pub resources: Resources,
}

/// A container's state as the State call reports it.
#[derive(Debug, Clone)]
pub struct State {
    pub id: String,
    pub bundle: PathBuf,
    pub pid: u32,
    pub stdio: Stdio,
    pub phase: Phase,
    pub exit: Option<Exit>,
}

/// The pod's containers, and exits of processes no container has.
#[derive(Default)]
pub struct Containers {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    containers: HashMap<String, Container>,
    /// Exits of guests whose pid was not recorded yet.
    early: HashMap<u32, Exit>,
    /// Guests given up: their exit, whenever it comes, is nobody's, and must not be mistaken
    /// for that of a later process given the same pid.
    discarded: HashSet<u32>,
}

impl Table {
    fn get(&self, id: &str) -> Result<&Container, Error> {
        self.containers
            .get(id)
            .ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    fn get_mut(&mut self, id: &str) -> Result<&mut Container, Error> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    fn discard(&mut self, pid: u32) {
        if self.early.remove(&pid).is_none() {
            let _ = crate::sys::kill(pid, libc::SIGKILL);
            self.discarded.insert(pid);
        }
    }
}

fn refused(id: &str) -> impl FnOnce(Refused) -> Error + '_ {
    move |source| Error::Refused {
        id: id.to_owned(),
        source,
    }
}

impl Containers {
    // No call awaits or blocks for long while holding the lock, so a std mutex; a panic
    // while holding it leaves the table consistent enough to go on.
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.lock().containers.contains_key(id)
    }

    pub fn is_empty(&self) -> bool {
        self.lock().containers.is_empty()
    }

    /// Adds a container. Should its id have been taken meanwhile (two creates racing), its
    /// guest is given up and what it holds released.
    pub fn insert(&self, c: Container) -> Result<(), Error> {
        let mut t = self.lock();
        if !t.containers.contains_key(&c.id) {
            t.containers.insert(c.id.clone(), c);
            return Ok(());
        }
        if let Some(pid) = c.pid {
            t.discard(pid);
        }
        drop(t);
        c.resources.release();
        Err(Error::AlreadyExists(c.id))
    }

    /// The network namespace of sandbox `id`, if this shim runs that sandbox.
    pub fn sandbox_netns(&self, id: &str) -> Option<Option<PathBuf>> {
        self.lock()
            .containers
            .get(id)
            .filter(|c| c.kind == Kind::Sandbox)
            .map(|c| c.netns.clone())
    }

    /// Gives up guest process `pid` (killed unless it has already exited).
    pub fn discard(&self, pid: u32) {
        self.lock().discard(pid);
    }

    /// Begins a start: Created → Starting.
    pub fn start(&self, id: &str) -> Result<Starting, Error> {
        let mut t = self.lock();
        let c = t.get_mut(id)?;
        c.phase.start().map_err(refused(id))?;
        Ok(Starting {
            pid: c.task_pid(),
            signal: c.start.take(),
        })
    }

    /// Ends a start: Starting → Running, unless guest `pid` exited before its pid was
    /// recorded (then Exited, and the exit to tell).
    pub fn started(&self, id: &str, pid: u32) -> Option<ExitEvent> {
        let mut t = self.lock();
        let early = t.early.remove(&pid);
        let c = t.containers.get_mut(id)?;
        match early {
            Some(exit) => c.phase.exited(exit).ok().map(|()| c.record_exit(exit)),
            None => {
                // Refused only when an exit that came meanwhile has moved it on already.
                let _ = c.phase.started();
                None
            }
        }
    }

    /// Records that process `pid` exited with `code`; the exit to tell, if a container had it.
    pub fn exited(&self, pid: u32, code: u32) -> Option<ExitEvent> {
        let exit = Exit::now(code);
        let mut t = self.lock();
        let claimed = t
            .containers
            .values_mut()
            .filter(|c| c.pid == Some(pid))
            .find_map(|c| c.phase.exited(exit).ok().map(|()| c.record_exit(exit)));
        if claimed.is_none() && !t.discarded.remove(&pid) {
            t.early.insert(pid, exit);
        }
        claimed
    }

    /// What a kill with `signal` is to do; a sandbox is stopped here and then.
    pub fn kill(&self, id: &str, signal: u32) -> Result<Kill, Error> {
        let mut t = self.lock();
        let c = t.get_mut(id)?;
        if c.phase.kill().map_err(refused(id))? == Reach::AlreadyExited {
            return Ok(Kill::Nothing);
        }
        Ok(match c.pid {
            Some(pid) => Kill::Signal(pid),
            None => {
                let exit = Exit::now(signal.saturating_add(128));
                c.phase.exited(exit).map_err(refused(id))?;
                Kill::Stopped(c.record_exit(exit))
            }
        })
    }

    /// Begins a delete: Created or Exited → Deleting. A created guest (waiting for its start)
    /// is given up. [`Containers::remove`] ends it.
    pub fn delete(&self, id: &str) -> Result<Deleted, Error> {
        let mut t = self.lock();
        let c = t.get_mut(id)?;
        let was = c.phase;
        c.phase.delete().map_err(refused(id))?;
        let deleted = Deleted {
            pid: c.task_pid(),
            exit: match was {
                Phase::Exited(exit) => exit,
                _ => Exit::now(137),
            },
            resources: std::mem::take(&mut c.resources),
        };
        if let (Phase::Created, Some(pid)) = (was, c.pid) {
            t.discard(pid);
        }
        Ok(deleted)
    }

    /// Removes a container whose delete has begun.
    pub fn remove(&self, id: &str) {
        let mut t = self.lock();
        if t.containers
            .get(id)
            .is_some_and(|c| c.phase == Phase::Deleting)
        {
            t.containers.remove(id);
        }
    }

    pub fn state(&self, id: &str) -> Result<State, Error> {
        let t = self.lock();
        let c = t.get(id)?;
        Ok(State {
            id: c.id.clone(),
            bundle: c.bundle.clone(),
            pid: c.task_pid(),
            stdio: c.stdio.clone(),
            phase: c.phase,
            exit: *c.exits.borrow(),
        })
    }

    /// Follows the container's exit (the sender goes with the container).
    pub fn wait(&self, id: &str) -> Result<watch::Receiver<Option<Exit>>, Error> {
        Ok(self.lock().get(id)?.exits.subscribe())
    }

    /// The container's guest process, while it may be there.
    pub fn live_pid(&self, id: &str) -> Result<Option<u32>, Error> {
        let t = self.lock();
        let c = t.get(id)?;
        Ok(c.pid.filter(|_| c.phase.is_live()))
    }

    pub fn stats(&self, id: &str) -> Result<Stats, Error> {
        let t = self.lock();
        let c = t.get(id)?;
        Ok(c.resources
            .cgroup
            .as_ref()
            .map(Cgroup::stats)
            .unwrap_or_default())
    }

    /// The pid containerd is told for container `id`, if there is one.
    pub fn task_pid(&self, id: &str) -> Option<u32> {
        self.lock().containers.get(id).map(Container::task_pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: u32) -> Exit {
        Exit::now(code)
    }

    /// Each phase, built the way the table gets there.
    fn created() -> Phase {
        Phase::Created
    }
    fn starting() -> Phase {
        let mut p = created();
        p.start().expect("start");
        p
    }
    fn running() -> Phase {
        let mut p = starting();
        p.started().expect("started");
        p
    }
    fn exited() -> Phase {
        let mut p = running();
        p.exited(exit(0)).expect("exited");
        p
    }
    fn deleting() -> Phase {
        let mut p = exited();
        p.delete().expect("delete");
        p
    }

    fn refused_and_unchanged(mut p: Phase, change: impl FnOnce(&mut Phase) -> Result<(), Refused>) {
        let before = p;
        let refusal = change(&mut p).expect_err("the change should be refused");
        assert_eq!(p, before, "a refused change leaves the phase as it was");
        assert_eq!(refusal.phase, before.name());
    }

    // start

    #[test]
    fn a_created_container_starts() {
        assert_eq!(starting(), Phase::Starting);
    }

    #[test]
    fn a_starting_container_cannot_be_started_again() {
        refused_and_unchanged(starting(), Phase::start);
    }

    #[test]
    fn a_running_container_cannot_be_started_again() {
        refused_and_unchanged(running(), Phase::start);
    }

    #[test]
    fn a_container_that_exited_cannot_be_started_again() {
        refused_and_unchanged(exited(), Phase::start);
    }

    #[test]
    fn a_container_being_deleted_cannot_be_started() {
        refused_and_unchanged(deleting(), Phase::start);
    }

    // started

    #[test]
    fn a_starting_container_becomes_running() {
        assert_eq!(running(), Phase::Running);
    }

    #[test]
    fn a_created_container_cannot_be_running_without_a_start() {
        refused_and_unchanged(created(), Phase::started);
    }

    #[test]
    fn a_running_container_cannot_be_marked_running_twice() {
        refused_and_unchanged(running(), Phase::started);
    }

    #[test]
    fn a_container_that_exited_while_starting_stays_exited() {
        let mut p = starting();
        p.exited(exit(3)).expect("exited");
        refused_and_unchanged(p, Phase::started);
    }

    #[test]
    fn a_container_being_deleted_cannot_be_marked_running() {
        refused_and_unchanged(deleting(), Phase::started);
    }

    // exited

    #[test]
    fn a_created_starting_or_running_container_can_exit_and_keeps_its_status() {
        for mut p in [created(), starting(), running()] {
            let e = exit(7);
            p.exited(e).expect("exited");
            assert_eq!(p, Phase::Exited(e));
        }
    }

    #[test]
    fn a_container_cannot_exit_twice() {
        refused_and_unchanged(exited(), |p| p.exited(exit(1)));
    }

    #[test]
    fn a_container_being_deleted_cannot_exit() {
        refused_and_unchanged(deleting(), |p| p.exited(exit(1)));
    }

    // kill

    #[test]
    fn a_created_starting_or_running_container_can_be_killed() {
        for p in [created(), starting(), running()] {
            assert_eq!(p.kill(), Ok(Reach::Live), "{p:?}");
        }
    }

    #[test]
    fn killing_a_container_that_exited_is_no_error_and_reaches_nothing() {
        assert_eq!(exited().kill(), Ok(Reach::AlreadyExited));
    }

    #[test]
    fn a_container_being_deleted_cannot_be_killed() {
        assert!(deleting().kill().is_err());
    }

    // delete

    #[test]
    fn a_created_container_can_be_deleted() {
        let mut p = created();
        p.delete().expect("delete");
        assert_eq!(p, Phase::Deleting);
    }

    #[test]
    fn a_container_that_exited_can_be_deleted() {
        assert_eq!(deleting(), Phase::Deleting);
    }

    #[test]
    fn a_starting_container_cannot_be_deleted() {
        refused_and_unchanged(starting(), Phase::delete);
    }

    #[test]
    fn a_running_container_cannot_be_deleted_before_it_is_killed() {
        refused_and_unchanged(running(), Phase::delete);
    }

    #[test]
    fn a_container_cannot_be_deleted_twice() {
        refused_and_unchanged(deleting(), Phase::delete);
    }

    // the table

    fn sandbox(id: &str) -> Container {
        Container::sandbox(id.into(), PathBuf::from("/b"), Stdio::default(), None)
    }

    fn app(t: &Containers, id: &str, pid: u32) {
        let (_, w) = std::io::pipe().expect("pipe");
        let c = Container::app(
            id.into(),
            PathBuf::from("/b"),
            Stdio::default(),
            pid,
            std::fs::File::from(std::os::fd::OwnedFd::from(w)),
            Resources::default(),
        );
        t.insert(c).expect("insert");
    }

    // Pids no process has (above the kernel's pid_max), so discarding one signals nothing.
    const PID: u32 = 0x7fff_fff0;

    #[test]
    fn a_container_id_cannot_be_taken_twice() {
        let t = Containers::default();
        t.insert(sandbox("s")).expect("insert");
        assert!(t.insert(sandbox("s")).is_err());
    }

    #[test]
    fn unknown_containers_are_not_found() {
        let t = Containers::default();
        assert!(matches!(t.start("x"), Err(Error::NotFound(_))));
        assert!(matches!(t.kill("x", 9), Err(Error::NotFound(_))));
        assert!(matches!(t.delete("x"), Err(Error::NotFound(_))));
    }

    #[test]
    fn a_refused_start_names_the_container_and_its_phase() {
        let t = Containers::default();
        app(&t, "a", PID);
        t.start("a").expect("start");
        let e = t.start("a").expect_err("second start");
        assert_eq!(
            e.to_string(),
            "container a: it is starting and cannot be started"
        );
    }

    #[test]
    fn a_started_app_is_running_until_its_guest_exits_and_wait_sees_the_exit() {
        let t = Containers::default();
        app(&t, "a", PID);
        let s = t.start("a").expect("start");
        assert_eq!(s.pid, PID);
        assert!(s.signal.is_some(), "the start pipe is handed over once");
        assert_eq!(t.started("a", PID), None);
        assert_eq!(t.state("a").expect("state").phase, Phase::Running);
        let wait = t.wait("a").expect("wait");
        let event = t.exited(PID, 3).expect("the exit is the container's");
        assert_eq!((event.id.as_str(), event.exit.code), ("a", 3));
        assert_eq!(wait.borrow().map(|e| e.code), Some(3));
        assert_eq!(t.kill("a", 9).expect("kill"), Kill::Nothing);
    }

    #[test]
    fn an_exit_that_came_before_the_pid_was_recorded_ends_the_start() {
        let t = Containers::default();
        assert_eq!(t.exited(PID, 1), None);
        app(&t, "a", PID);
        t.start("a").expect("start");
        let event = t.started("a", PID).expect("the early exit");
        assert_eq!(event.exit.code, 1);
        assert!(matches!(
            t.state("a").expect("state").phase,
            Phase::Exited(_)
        ));
    }

    #[test]
    fn killing_a_sandbox_stops_it_with_the_signal_in_its_status() {
        let t = Containers::default();
        t.insert(sandbox("s")).expect("insert");
        let Kill::Stopped(event) = t.kill("s", 15).expect("kill") else {
            panic!("a sandbox stops by bookkeeping");
        };
        assert_eq!(event.exit.code, 143);
        assert_eq!(event.pid, std::process::id());
    }

    #[test]
    fn killing_a_live_app_signals_its_guest() {
        let t = Containers::default();
        app(&t, "a", PID);
        assert_eq!(t.kill("a", 15).expect("kill"), Kill::Signal(PID));
    }

    #[test]
    fn deleting_a_created_app_gives_up_its_guest_whose_exit_is_then_nobodys() {
        let t = Containers::default();
        app(&t, "a", PID);
        let deleted = t.delete("a").expect("delete");
        assert_eq!((deleted.pid, deleted.exit.code), (PID, 137));
        assert_eq!(t.exited(PID, 137), None);
        t.remove("a");
        assert!(t.is_empty());
        // A later process given the same pid: its exit is its own, not swallowed.
        assert_eq!(t.exited(PID, 0), None);
        app(&t, "b", PID);
        t.start("b").expect("start");
        let event = t.started("b", PID).expect("the later process's early exit");
        assert_eq!(event.exit.code, 0);
    }

    #[test]
    fn a_deleted_container_keeps_the_status_it_exited_with() {
        let t = Containers::default();
        app(&t, "a", PID);
        t.start("a").expect("start");
        t.started("a", PID);
        t.exited(PID, 42);
        assert_eq!(t.delete("a").expect("delete").exit.code, 42);
    }

    #[test]
    fn a_running_container_is_not_removed_without_a_delete() {
        let t = Containers::default();
        app(&t, "a", PID);
        t.start("a").expect("start");
        t.started("a", PID);
        assert!(t.delete("a").is_err());
        t.remove("a");
        assert!(t.contains("a"));
    }

    #[test]
    fn only_a_sandbox_lends_its_network_namespace() {
        let t = Containers::default();
        t.insert(Container::sandbox(
            "s".into(),
            PathBuf::from("/b"),
            Stdio::default(),
            Some(PathBuf::from("/run/netns/x")),
        ))
        .expect("insert");
        app(&t, "a", PID);
        assert_eq!(
            t.sandbox_netns("s"),
            Some(Some(PathBuf::from("/run/netns/x")))
        );
        assert_eq!(t.sandbox_netns("a"), None);
    }
}
