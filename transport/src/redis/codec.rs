//! The entry codec: one stream entry is one publish of one execution, field
//! `fid` and then one field per event, named by its seq, valued
//! `"{ts} {kind} {payload}"`.

use kodo_core::{Event, Fid, Kind};
use redis::streams::StreamId as Entry;

/// The fields of an entry for `events` (all of one execution), seq first.
pub(super) fn encode(events: Vec<Event>) -> Vec<(u64, String)> {
    events
        .into_iter()
        .map(|e| (e.seq, format!("{} {} {}", e.ts, e.kind.as_str(), e.payload)))
        .collect()
}

/// Turns an entry into events in seq order; a malformed or deleted entry is
/// an error naming it.
pub(super) fn decode(entry: &Entry) -> Result<Vec<Event>, String> {
    let bad = |why: &str| format!("entry {}: {why}", entry.id);
    if entry.map.is_empty() {
        return Err(bad("deleted or empty"));
    }
    let fid = entry
        .get::<String>("fid")
        .and_then(|f| Fid::parse(&f))
        .ok_or_else(|| bad("no valid fid"))?;
    let mut events = Vec::with_capacity(entry.map.len() - 1);
    for key in entry.map.keys().filter(|k| *k != "fid") {
        let seq: u64 = key.parse().map_err(|_| bad("a field is not a seq"))?;
        let value: String = entry.get(key).ok_or_else(|| bad("not UTF-8"))?;
        let mut parts = value.splitn(3, ' ');
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
        });
    }
    events.sort_by_key(|e| e.seq);
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn entry(id: &str, fields: &[(&str, &str)]) -> Entry {
        Entry {
            id: id.into(),
            map: fields
                .iter()
                .map(|(k, v)| (k.to_string(), Value::BulkString(v.as_bytes().to_vec())))
                .collect(),
            ..Entry::default()
        }
    }

    #[test]
    fn entries_round_trip_and_junk_is_refused() {
        let fid = Fid::new();
        let events: Vec<Event> = [(3, "\"a b c\"", 1.5), (2, "\"running\"", 1.25)]
            .into_iter()
            .map(|(seq, payload, ts)| Event {
                fid: fid.clone(),
                seq,
                ts,
                kind: Kind::Stdout,
                payload: payload.into(),
            })
            .collect();
        let fields = encode(events);
        let mut pairs: Vec<(String, String)> = vec![("fid".into(), fid.as_str().into())];
        pairs.extend(fields.into_iter().map(|(seq, v)| (seq.to_string(), v)));
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (&**k, &**v)).collect();
        let decoded = decode(&entry("1-1", &refs)).unwrap();
        assert_eq!(decoded.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(decoded[1].payload, "\"a b c\"");
        assert_eq!(decoded[0].ts, 1.25);
        assert!(
            decode(&entry("1-2", &[("hello", "world")]))
                .unwrap_err()
                .contains("1-2")
        );
        assert!(decode(&entry("1-3", &[])).unwrap_err().contains("deleted"));
    }
}
