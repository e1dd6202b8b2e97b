//! Restart policies, declared per actor kind in one place (like OTP's
//! intensity and period): at most `max_restarts` within `within`, then the
//! supervisor gives up and escalates to its own parent.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often a supervisor may restart one kind of child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed inside the window; 0 means never restart.
    pub max_restarts: usize,
    /// The sliding window.
    pub within: Duration,
}

/// Spoolers restart (their unacknowledged deliveries come again); ten
/// crashes in a minute means the store or the code is broken: escalate.
pub const SPOOLER: RestartPolicy = RestartPolicy {
    max_restarts: 10,
    within: Duration::from_secs(60),
};

/// Runners (children of the Executions supervisor) never restart: a crash
/// ends the execution with `error` and its cause (a flow that allows
/// retries is a later feature).
pub const RUNNER: RestartPolicy = RestartPolicy {
    max_restarts: 0,
    within: Duration::from_secs(1),
};

/// The node's supervisors (Executions, Spoolers) never restart: one that
/// stops unasked, or gives up on its children, ends the node, which exits
/// non-zero for its own supervisor (systemd, Docker) to start it again; the
/// new run closes what this one left (`error: node restarted`).
pub const SUPERVISOR: RestartPolicy = RestartPolicy {
    max_restarts: 0,
    within: Duration::from_secs(1),
};

/// The restarts one child has had, to apply a [`RestartPolicy`].
#[derive(Debug, Default)]
pub struct RestartLog {
    times: VecDeque<Instant>,
}

impl RestartLog {
    /// Records a failure at `now`; true when the policy allows a restart.
    pub fn allow(&mut self, policy: RestartPolicy, now: Instant) -> bool {
        while let Some(&t) = self.times.front() {
            if now.duration_since(t) > policy.within {
                self.times.pop_front();
            } else {
                break;
            }
        }
        if self.times.len() >= policy.max_restarts {
            return false;
        }
        self.times.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_n_in_window_then_escalates_and_forgets_old_ones() {
        let policy = RestartPolicy {
            max_restarts: 2,
            within: Duration::from_secs(10),
        };
        let t0 = Instant::now();
        let mut log = RestartLog::default();
        assert!(log.allow(policy, t0));
        assert!(log.allow(policy, t0 + Duration::from_secs(1)));
        assert!(!log.allow(policy, t0 + Duration::from_secs(2)));
        assert!(log.allow(policy, t0 + Duration::from_secs(12)));
        let mut never = RestartLog::default();
        assert!(!never.allow(RUNNER, t0));
        assert!(!never.allow(SUPERVISOR, t0));
    }
}
