//! Every call into the operating system that Rust cannot check: the one
//! module of kodo allowed `unsafe` code, each use with its SAFETY note.
//! The rest of `actors` calls these safe wrappers.

#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A process or process group id.
pub(crate) type Pid = libc::pid_t;

/// Sends `signal` (`libc::SIGTERM`, `libc::SIGKILL`...) to every process
/// of group `pgid`.
pub(crate) fn signal_group(pgid: Pid, signal: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals a group; no memory is touched.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Makes the child's fd 3 the write end `w` of a pipe (closed on exec in
/// this process, open in the child).
pub(crate) fn give_fd3(cmd: &mut tokio::process::Command, w: RawFd) {
    // SAFETY: only async-signal-safe calls (dup2, fcntl) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let ok = if w == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(w, 3)
            };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The read end of a pipe, non-blocking, registered with tokio's reactor.
pub(crate) fn readable_pipe(fd: OwnedFd) -> std::io::Result<AsyncFd<File>> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is touched.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: a File owns its descriptor: it stays open, and the same,
    // for as long as the AsyncFd holds the File.
    unsafe { AsyncFd::register_with_interest(File::from(fd), Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// Bytes a pipe holds now, not read yet (FIONREAD).
pub(crate) fn bytes_held(fd: &impl AsRawFd) -> std::io::Result<usize> {
    let mut held: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int, into `held`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut held) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(held.max(0) as usize)
}

/// `slots` zeroed integers in anonymous shared memory, which a forked
/// child shares with this process; never unmapped.
pub(crate) fn shared_table(slots: usize) -> std::io::Result<&'static [AtomicI32]> {
    let bytes = slots * std::mem::size_of::<AtomicI32>();
    // SAFETY: a fresh anonymous mapping; nothing else refers to it.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the mapping is zeroed, aligned, `bytes` long and never
    // unmapped; AtomicI32 has the layout of i32.
    Ok(unsafe { std::slice::from_raw_parts(map as *const AtomicI32, slots) })
}

/// Waits for child `pid` to end; returns its wait status.
pub(crate) fn wait_child(pid: Pid) -> libc::c_int {
    let mut status = 0;
    // SAFETY: waits for our own child; writes one int, into `status`.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    status
}

/// Forks the watchdog: a child that waits for the end of the pipe `read`
/// (its write end stays in this process alone), then kills every process
/// group listed in `table` (slot 0: the highest slot used) and exits.
/// Returns the child's pid.
pub(crate) fn fork_watchdog(read: &OwnedFd, table: &'static [AtomicI32]) -> std::io::Result<Pid> {
    let read = read.as_raw_fd();
    // SAFETY: the child runs only async-signal-safe calls and never
    // returns from `watch_until_parent_dies`.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => unsafe { watch_until_parent_dies(read, table) },
        pid => Ok(pid),
    }
}

/// The watchdog's whole life, in the forked child: leave the parent's
/// process group and signals, close every descriptor but the pipe, wait for
/// the pipe's end, kill the listed groups, exit.
///
/// # Safety
/// Call only in a child just forked; only async-signal-safe calls follow.
unsafe fn watch_until_parent_dies(read: libc::c_int, table: &[AtomicI32]) -> ! {
    // SAFETY (whole body): setpgid, sigaction, dup2, close_range, close,
    // read, kill and _exit are async-signal-safe; nothing allocates.
    unsafe {
        libc::setpgid(0, 0);
        let mut ignore: libc::sigaction = std::mem::zeroed();
        ignore.sa_sigaction = libc::SIG_IGN;
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
            libc::sigaction(signal, &ignore, std::ptr::null_mut());
        }
        const PIPE: libc::c_int = 3;
        if read != PIPE && libc::dup2(read, PIPE) < 0 {
            libc::_exit(1);
        }
        if libc::syscall(libc::SYS_close_range, PIPE + 1, libc::c_uint::MAX, 0) != 0 {
            for fd in PIPE + 1..65536 {
                libc::close(fd);
            }
        }
        for fd in 0..PIPE {
            libc::close(fd);
        }
        let mut byte = 0u8;
        loop {
            let n = libc::read(PIPE, (&mut byte as *mut u8).cast(), 1);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
        }
        let used = (table[0].load(Ordering::SeqCst).max(0) as usize).min(table.len() - 1);
        for slot in &table[1..=used] {
            let pgid = slot.load(Ordering::SeqCst);
            if pgid > 0 {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        libc::_exit(0)
    }
}
