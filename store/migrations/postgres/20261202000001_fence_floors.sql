-- Where each attempt of a durable execution began: the highest seq stored
-- when it fenced. An event of an older attempt is still taken when its seq
-- is at or below the floor of the first attempt that fenced after its own:
-- it was published before that retry began, and the retry went on after
-- it (two spoolers may store one attempt's events out of order).
CREATE TABLE fence_floors (
    fid     TEXT COLLATE "C" NOT NULL,
    attempt BIGINT NOT NULL,
    floor   BIGINT NOT NULL,
    PRIMARY KEY (fid, attempt)
);
