-- One database for every execution: a row per execution, a row per event.
-- Ids and names sort bytewise (COLLATE "C"): UUIDv7 text order is time order.
CREATE TABLE executions (
    fid        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    flow       TEXT COLLATE "C" NOT NULL,
    owner      TEXT COLLATE "C" NOT NULL,
    node       TEXT COLLATE "C" NOT NULL,
    status     TEXT COLLATE "C" NOT NULL,
    status_seq BIGINT           NOT NULL,
    created    DOUBLE PRECISION NOT NULL,
    updated    DOUBLE PRECISION NOT NULL,
    events     BIGINT           NOT NULL
);
-- Every listing the API makes: newest first (fid DESC), filtered by owner,
-- status or flow, paged by a fid cursor; and a node's unfinished executions.
CREATE INDEX executions_by_owner  ON executions (owner, fid);
CREATE INDEX executions_by_status ON executions (status, fid);
CREATE INDEX executions_by_flow   ON executions (flow, fid);
CREATE INDEX executions_by_node   ON executions (node, status);

-- The primary key keeps (fid, seq) once and serves reads of one execution
-- after a seq. The payload is kept as the exact JSON text the flow emitted.
CREATE TABLE events (
    fid     TEXT COLLATE "C" NOT NULL,
    seq     BIGINT           NOT NULL,
    ts      DOUBLE PRECISION NOT NULL,
    kind    TEXT COLLATE "C" NOT NULL,
    payload TEXT             NOT NULL,
    PRIMARY KEY (fid, seq)
);
