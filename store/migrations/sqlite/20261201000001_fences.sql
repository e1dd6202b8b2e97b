-- The attempt each durable execution is fenced for: the store refuses the
-- events of an older attempt (a worker that was frozen, then woke).
CREATE TABLE fences (
    fid     TEXT    NOT NULL PRIMARY KEY,
    attempt INTEGER NOT NULL
);
