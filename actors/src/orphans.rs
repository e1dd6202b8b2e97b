//! A command flow's process group never outlives the process that runs it,
//! however that process dies (SIGKILL included).
//!
//! The process forks a watchdog: a copy of itself that only waits for the
//! end of a pipe whose write end stays in this process alone. `runtime run`
//! forks it first thing, while the process is small and has one thread (a
//! forked child keeps the pages it was forked with, so a late fork of a
//! large node would pin its memory); a library user gets it at the first
//! command flow. If the watchdog dies, another is started (the table
//! survives: it is shared memory). The kernel closes that pipe when this
//! process dies, for any reason; the watchdog then kills every process group
//! listed in a table the two share (anonymous shared memory) and exits.
//! Flows register their group when they start and leave the table when
//! their group is gone.
//!
//! The parent-death signal (`PR_SET_PDEATHSIG`) would not do: it fires when
//! the *thread* that forked dies, and tokio's threads come and go; it also
//! reaches only the group's leader, not the processes it started.
//!
//! Between `fork` and `_exit` the watchdog calls only async-signal-safe
//! functions (the process it was forked from has many threads).

use crate::sys;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Slots in the shared table: process groups that can be watched at once
/// (4 MiB of address space; only the pages used take memory).
const SLOTS: usize = 1 << 20;

/// The process's one watchdog table (None: it could not be made).
static WATCHDOG: OnceLock<Option<Watchdog>> = OnceLock::new();

struct Watchdog {
    /// `SLOTS` shared integers: slot 0 holds the highest slot ever used,
    /// the others a process group id or 0.
    table: &'static [AtomicI32],
    slots: Mutex<Slots>,
    /// The watchdog process now, if one runs.
    running: Mutex<Option<Running>>,
}

/// A forked watchdog.
struct Running {
    /// The write end of the pipe; never written, closed by the kernel when
    /// this process ends.
    _alive: OwnedFd,
    /// Set when the watchdog exited.
    dead: Arc<AtomicBool>,
}

#[derive(Default)]
struct Slots {
    free: Vec<usize>,
    used: usize,
}

/// A process group listed with the watchdog; leaves the list when dropped.
#[derive(Debug)]
pub(crate) struct Watched {
    slot: usize,
}

fn watchdog() -> Option<&'static Watchdog> {
    WATCHDOG
        .get_or_init(|| match Watchdog::new() {
            Ok(dog) => Some(dog),
            Err(e) => {
                tracing::error!(error = %e, "cannot make the watchdog's table; flow processes may outlive a crash of this process");
                None
            }
        })
        .as_ref()
}

/// Starts the watchdog now (`runtime run` does, before anything else), so
/// the fork copies a small, single-threaded process.
pub fn start() {
    if let Some(dog) = watchdog() {
        dog.ensure_running();
    }
}

/// Lists process group `pgid` with the watchdog (starting it if none runs).
/// `None` when there is no watchdog or its table is full: the flow runs
/// anyway, without that protection (logged).
pub(crate) fn watch(pgid: libc::pid_t) -> Option<Watched> {
    let dog = watchdog()?;
    if !dog.ensure_running() {
        return None;
    }
    let slot = {
        let mut slots = dog.slots.lock().expect("slots lock");
        match slots.free.pop() {
            Some(slot) => slot,
            None if slots.used + 1 < SLOTS => {
                slots.used += 1;
                dog.table[0].store(slots.used as i32, Ordering::SeqCst);
                slots.used
            }
            None => {
                tracing::warn!(
                    pgid,
                    "the watchdog's table is full; this flow is not watched"
                );
                return None;
            }
        }
    };
    dog.table[slot].store(pgid, Ordering::SeqCst);
    Some(Watched { slot })
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(Some(dog)) = WATCHDOG.get() {
            dog.table[self.slot].store(0, Ordering::SeqCst);
            dog.slots.lock().expect("slots lock").free.push(self.slot);
        }
    }
}

impl Watchdog {
    /// The shared table, with no watchdog yet.
    fn new() -> std::io::Result<Self> {
        let table = sys::shared_table(SLOTS)?;
        Ok(Self {
            table,
            slots: Mutex::new(Slots::default()),
            running: Mutex::new(None),
        })
    }

    /// Makes sure a watchdog process runs (forking one if none does, or
    /// the last one died); false when none can be started.
    fn ensure_running(&self) -> bool {
        let mut running = self.running.lock().expect("watchdog lock");
        if running
            .as_ref()
            .is_some_and(|now| !now.dead.load(Ordering::Acquire))
        {
            return true;
        }
        match fork_watchdog(self.table) {
            Ok(now) => {
                *running = Some(now);
                true
            }
            Err(e) => {
                *running = None;
                tracing::error!(error = %e, "cannot start the watchdog of flow processes; they may outlive a crash of this process");
                false
            }
        }
    }
}

/// Forks a watchdog over `table`. A thread of this process, started first
/// (so that nothing can fail between the fork and the parent's hold on the
/// pipe), reaps it, notes its death and starts another.
fn fork_watchdog(table: &'static [AtomicI32]) -> std::io::Result<Running> {
    let (read, write) = std::io::pipe()?;
    let (read, write) = (OwnedFd::from(read), OwnedFd::from(write));
    let dead = Arc::new(AtomicBool::new(false));
    let (forked, child) = std::sync::mpsc::channel::<libc::pid_t>();
    let noted = dead.clone();
    std::thread::Builder::new()
        .name("kodo-watchdog-reaper".into())
        .spawn(move || {
            let Ok(pid) = child.recv() else {
                return;
            };
            let status = sys::wait_child(pid);
            noted.store(true, Ordering::Release);
            tracing::error!(
                pid,
                status,
                "the watchdog of flow processes ended; starting another"
            );
            // Not in a tight loop if it keeps dying.
            std::thread::sleep(std::time::Duration::from_secs(1));
            if let Some(dog) = watchdog() {
                dog.ensure_running();
            }
        })?;
    match sys::fork_watchdog(&read, table) {
        Err(e) => Err(e),
        Ok(pid) => {
            drop(read);
            let _ = forked.send(pid);
            tracing::debug!(pid, "watchdog of flow processes started");
            Ok(Running {
                _alive: write,
                dead,
            })
        }
    }
}
