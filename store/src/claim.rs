//! Node names are owned: a node claims its name in the store before it
//! touches any execution (at start it closes what a previous run of that
//! name left unfinished), and a second live node with the same name is
//! refused. The claim dies with the process that holds it, whatever kills it.
//!
//! - SQLite: an exclusive `flock` on a lock file beside the database
//!   (`kodo.db.node-NAME.lock`); the kernel drops it when the process dies.
//! - PostgreSQL: a session advisory lock on a connection of its own; the
//!   server drops it when that session ends.

use crate::StoreError;
use std::fs::{OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

/// Proof that this process owns a node name in a store; the name is free
/// again once this is dropped (or the process ends).
pub struct NodeClaim {
    _held: Box<dyn Send>,
}

impl std::fmt::Debug for NodeClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeClaim")
    }
}

impl NodeClaim {
    /// A claim held by `held` for as long as it lives.
    pub fn new(held: impl Send + 'static) -> Self {
        Self {
            _held: Box::new(held),
        }
    }
}

/// The lock file of node `node` beside the database file `db`: the name is
/// spelled safely (anything but letters, digits, `-`, `_` and `.` as `%XX`).
fn lock_path(db: &Path, node: &str) -> std::path::PathBuf {
    let mut safe = String::new();
    for b in node.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            safe.push(b as char);
        } else {
            safe.push_str(&format!("%{b:02X}"));
        }
    }
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".node-{safe}.lock"));
    db.with_file_name(name)
}

/// Claims `node` beside the SQLite database file `db`.
pub(crate) fn claim_file(db: &Path, node: &str) -> Result<NodeClaim, StoreError> {
    let path = lock_path(db, node);
    let io = |e: std::io::Error| StoreError::ClaimFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            file.read_to_string(&mut holder).ok();
            let holder = holder.trim();
            return Err(StoreError::NodeTaken {
                node: node.to_string(),
                holder: if holder.is_empty() {
                    format!("{} is locked", path.display())
                } else {
                    format!("{holder}, lock file {}", path.display())
                },
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "held by process {}", std::process::id()).map_err(io)?;
    Ok(NodeClaim::new(file))
}

/// The SQL that takes node `$1`'s advisory lock without waiting.
pub(crate) const PG_CLAIM_SQL: &str =
    "SELECT pg_try_advisory_lock(hashtextextended('kodo-node:' || $1, 0))";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_claimed_once_until_its_claim_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("kodo.db");
        let first = claim_file(&db, "node a/b").unwrap();
        assert!(dir.path().join("kodo.db.node-node%20a%2Fb.lock").exists());
        let err = claim_file(&db, "node a/b").unwrap_err().to_string();
        assert!(err.contains("node `node a/b` is already running"), "{err}");
        assert!(
            err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        let other = claim_file(&db, "other").unwrap();
        drop(first);
        claim_file(&db, "node a/b").unwrap();
        drop(other);
    }
}
