//! What the consumer groups of a stream still need: the oldest entry some
//! group has not acknowledged, and how many entries wait. The trim, `/health`
//! and the cluster's settle all read the groups through here, with
//! redis-rs's typed replies to `XINFO GROUPS` and `XPENDING` (which hold no
//! entries, so they parse whatever the streams hold).

use redis::aio::ConnectionLike;
use redis::streams::{StreamInfoGroupsReply, StreamPendingReply};
use redis::{Value, cmd};
use std::collections::HashMap;

/// A stream entry id `ms-seq`, ordered as Redis orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryId(pub u64, pub u64);

impl EntryId {
    /// Parses `ms-seq`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }

    /// The smallest id after this one.
    pub fn next(self) -> Self {
        match self.1.checked_add(1) {
            Some(seq) => Self(self.0, seq),
            None => Self(self.0 + 1, 0),
        }
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// The oldest entry of stream `key` that some consumer group has not
/// acknowledged (pending at a consumer, or not delivered yet): every entry
/// below it is acknowledged by every group. None when that cannot be told
/// (no group, or an id that does not parse).
pub async fn first_unacked(
    conn: &mut impl ConnectionLike,
    key: &str,
) -> Result<Option<EntryId>, redis::RedisError> {
    let groups: StreamInfoGroupsReply = cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(conn)
        .await?;
    let mut first: Option<EntryId> = None;
    for group in groups.groups {
        let needed = if group.pending > 0 {
            let summary: StreamPendingReply = cmd("XPENDING")
                .arg(key)
                .arg(&group.name)
                .query_async(conn)
                .await?;
            match summary {
                StreamPendingReply::Data(data) => EntryId::parse(&data.start_id),
                // Acknowledged meanwhile: everything delivered is done.
                StreamPendingReply::Empty => {
                    EntryId::parse(&group.last_delivered_id).map(EntryId::next)
                }
                // A reply this version does not know: cannot tell.
                _ => None,
            }
        } else {
            EntryId::parse(&group.last_delivered_id).map(EntryId::next)
        };
        let Some(needed) = needed else {
            return Ok(None);
        };
        first = Some(first.map_or(needed, |f| f.min(needed)));
    }
    Ok(first)
}

/// The id Redis gave the newest entry of stream `key` (`0-0` if none yet).
pub async fn last_generated(
    conn: &mut impl ConnectionLike,
    key: &str,
) -> Result<EntryId, redis::RedisError> {
    // A map of values, not the typed reply: that one also parses the
    // first and last entries, and fails on an entry kodo did not write.
    let info: HashMap<String, Value> = cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async(conn)
        .await?;
    let last = info
        .get("last-generated-id")
        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
    Ok(last
        .and_then(|id| EntryId::parse(&id))
        .unwrap_or(EntryId(0, 0)))
}

/// Entries of an `XINFO GROUPS` reply not yet acknowledged: pending at a
/// consumer or not delivered (lag; 0 when Redis cannot tell).
pub(super) fn backlog(groups: &StreamInfoGroupsReply) -> usize {
    groups
        .groups
        .iter()
        .map(|g| g.pending + g.lag.unwrap_or(0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_and_step() {
        let a = EntryId::parse("1700000000000-5").unwrap();
        assert_eq!(a.next().to_string(), "1700000000000-6");
        assert!(a < EntryId::parse("1700000000001-0").unwrap());
        assert_eq!(EntryId::parse("nonsense"), None);
    }
}
