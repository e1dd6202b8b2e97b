//! Progress of a long wait on stderr: one line rewritten in place on a
//! terminal, a plain line every few seconds otherwise (a CI log).

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Awaits `future`, showing `done()` of `total` `what` while it runs.
pub(crate) async fn showing<T>(
    what: &str,
    total: u64,
    done: impl Fn() -> u64,
    future: impl Future<Output = T>,
) -> T {
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    let start = Instant::now();
    tokio::pin!(future);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut shown = false;
    let out = loop {
        tokio::select! {
            out = &mut future => break out,
            _ = ticks.tick() => {
                let line = format!("  {}/{total} {what}, {:.0} s", done(), start.elapsed().as_secs_f64());
                let mut err = std::io::stderr().lock();
                let _ = if terminal {
                    write!(err, "\r\x1b[2K{line}")
                } else {
                    writeln!(err, "{line}")
                };
                shown = true;
            }
        }
    };
    if terminal && shown {
        let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
    }
    out
}
