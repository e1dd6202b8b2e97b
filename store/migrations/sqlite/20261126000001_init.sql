-- One database for every execution: a row per execution, a row per event.
CREATE TABLE executions (
    fid        TEXT    NOT NULL PRIMARY KEY,
    flow       TEXT    NOT NULL,
    owner      TEXT    NOT NULL,
    node       TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    status_seq INTEGER NOT NULL,
    created    REAL    NOT NULL,
    updated    REAL    NOT NULL,
    events     INTEGER NOT NULL
);
CREATE INDEX executions_by_owner  ON executions (owner, fid);
CREATE INDEX executions_by_status ON executions (status, fid);
CREATE INDEX executions_by_flow   ON executions (flow, fid);
CREATE INDEX executions_by_node   ON executions (node, status);

-- Rows are appended in commit order (rowid), so a batch that interleaves many
-- executions writes a few sequential pages; the unique index keeps (fid, seq)
-- once and serves reads by execution.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY,
    fid     TEXT    NOT NULL,
    seq     INTEGER NOT NULL,
    ts      REAL    NOT NULL,
    kind    TEXT    NOT NULL,
    payload TEXT    NOT NULL
);
CREATE UNIQUE INDEX events_by_fid_seq ON events (fid, seq);
