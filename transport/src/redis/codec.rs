//! The entry codec: one stream entry is one publish of one execution, field
//! `fid`, field `attempt` for a durable attempt's events, and then one field
//! per event, named by its seq, valued `"{ts} {kind} {payload}"`.
//!
//! Entries are read from the raw replies of XREADGROUP and XAUTOCLAIM here,
//! not with redis-rs's typed stream replies: those fail a whole reply on one
//! entry whose field names are not UTF-8 (an entry kodo did not write would
//! then block its stream for good, where it must be skipped and
//! acknowledged), and they copy every payload once more on the spoolers'
//! hot path.

use kodo_core::{Event, Fid, Kind};
use redis::Value;

/// One stream entry: its id and, unless it was deleted or is not made of
/// strings, its fields.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) id: String,
    fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// The fields of an entry for `events` (all of one execution), seq first.
pub(super) fn encode(events: Vec<Event>) -> Vec<(u64, String)> {
    events
        .into_iter()
        .map(|e| (e.seq, format!("{} {} {}", e.ts, e.kind.as_str(), e.payload)))
        .collect()
}

/// The entries of an XREADGROUP reply (`[[stream, [entry...]]...]`).
pub(super) fn read_reply(reply: Value) -> Vec<Entry> {
    array(reply)
        .into_iter()
        .flat_map(|stream| {
            let mut parts = array(stream).into_iter();
            parts.next();
            parts.next().map(entries).unwrap_or_default()
        })
        .collect()
}

/// The entries of an XAUTOCLAIM reply (`[next, [entry...], deleted]`).
pub(super) fn claim_reply(reply: Value) -> Vec<Entry> {
    let mut parts = array(reply).into_iter();
    parts.next();
    parts.next().map(entries).unwrap_or_default()
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

fn entries(v: Value) -> Vec<Entry> {
    array(v)
        .into_iter()
        .filter_map(|entry| {
            let mut parts = array(entry).into_iter();
            let id = String::from_utf8(bytes(parts.next()?)?).ok()?;
            let fields = parts.next().and_then(|f| {
                let flat = array(f);
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((bytes(k)?, bytes(v)?));
                }
                (!pairs.is_empty()).then_some(pairs)
            });
            Some(Entry { id, fields })
        })
        .collect()
}

/// Turns an entry into events in seq order; a malformed or deleted entry is
/// an error naming it.
pub(super) fn decode(entry: &Entry) -> Result<Vec<Event>, String> {
    let fields = entry
        .fields
        .as_ref()
        .ok_or_else(|| format!("entry {} was deleted or is not made of strings", entry.id))?;
    let bad = |why: &str| format!("entry {}: {why}", entry.id);
    let fid = fields
        .iter()
        .find(|(k, _)| k == b"fid")
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .and_then(Fid::parse)
        .ok_or_else(|| bad("no valid fid"))?;
    let attempt = match fields.iter().find(|(k, _)| k == b"attempt") {
        Some((_, v)) => std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("a bad attempt"))?,
        None => 0,
    };
    let mut events = Vec::with_capacity(fields.len() - 1);
    for (k, v) in fields
        .iter()
        .filter(|(k, _)| k != b"fid" && k != b"attempt")
    {
        let seq: u64 = std::str::from_utf8(k)
            .ok()
            .and_then(|k| k.parse().ok())
            .ok_or_else(|| bad("a field is not a seq"))?;
        let v = std::str::from_utf8(v).map_err(|_| bad("not UTF-8"))?;
        let mut parts = v.splitn(3, ' ');
        let (Some(ts), Some(kind), Some(payload)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("an event is not `ts kind payload`"));
        };
        events.push(Event {
            fid: fid.clone(),
            seq,
            ts: ts.parse().map_err(|_| bad("bad ts"))?,
            kind: kind.parse::<Kind>().map_err(|_| bad("bad kind"))?,
            payload: payload.to_string(),
            attempt,
        });
    }
    events.sort_by_key(|e| e.seq);
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    /// An XREADGROUP reply of one stream holding these entries.
    fn reply(entries: Vec<(&str, Value)>) -> Value {
        let entries = entries
            .into_iter()
            .map(|(id, fields)| Value::Array(vec![bulk(id.as_bytes()), fields]))
            .collect();
        Value::Array(vec![Value::Array(vec![
            bulk(b"kodo:events:0"),
            Value::Array(entries),
        ])])
    }

    fn fields(pairs: &[(&[u8], &[u8])]) -> Value {
        Value::Array(pairs.iter().flat_map(|(k, v)| [bulk(k), bulk(v)]).collect())
    }

    #[test]
    fn entries_round_trip_and_junk_is_refused_alone() {
        let fid = Fid::new();
        let events: Vec<Event> = [(3, "\"a b c\"", 1.5), (2, "\"running\"", 1.25)]
            .into_iter()
            .map(|(seq, payload, ts)| Event {
                fid: fid.clone(),
                seq,
                ts,
                kind: Kind::Stdout,
                payload: payload.into(),
                attempt: 0,
            })
            .collect();
        let encoded = encode(events);
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![(b"fid".to_vec(), fid.as_str().into())];
        pairs.extend(
            encoded
                .into_iter()
                .map(|(seq, v)| (seq.to_string().into_bytes(), v.into_bytes())),
        );
        let refs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let read = read_reply(reply(vec![
            ("1-1", fields(&refs)),
            ("1-2", fields(&[(b"hello", b"world")])),
            ("1-3", Value::Nil),
            ("1-4", fields(&[(b"\xff\xfe", b"not utf-8 names")])),
        ]));
        assert_eq!(read.len(), 4, "every entry is read, to be acked");
        let decoded = decode(&read[0]).unwrap();
        assert_eq!(decoded.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(decoded[1].payload, "\"a b c\"");
        assert_eq!(decoded[0].ts, 1.25);
        assert!(decode(&read[1]).unwrap_err().contains("1-2"));
        assert!(decode(&read[2]).unwrap_err().contains("deleted"));
        assert!(decode(&read[3]).unwrap_err().contains("1-4"));
    }
}
