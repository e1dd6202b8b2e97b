-- Where each attempt of a durable execution began: the highest seq stored
-- when it fenced. An event of an older attempt is still taken when its seq
-- is at or below the floor of the first attempt that fenced after its own:
-- it was published before that retry began, and the retry went on after
-- it (two spoolers may store one attempt's events out of order).
CREATE TABLE fence_floors (
    fid     TEXT    NOT NULL,
    attempt INTEGER NOT NULL,
    floor   INTEGER NOT NULL,
    PRIMARY KEY (fid, attempt)
);
-- Attempts fenced before this table existed: floor 0, so their older
-- attempts' events stay refused, as they were.
INSERT INTO fence_floors (fid, attempt, floor) SELECT fid, attempt, 0 FROM fences;
