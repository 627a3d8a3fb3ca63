-- Each entry's MAC under a key derived from audit's key, so that an entry
-- changed and hashed again, or made by anyone else, is named even after
-- the last checkpoint. Entries made before this column came have none,
-- and a signed marker ('macs_from') says from which entry on they do.
ALTER TABLE entries ADD COLUMN mac TEXT NOT NULL DEFAULT '';

-- Signed markers of what audit itself did to the chain: 'retained' (the
-- entries up to `seq` were removed by retention; `hash` is that entry's)
-- and 'macs_from' (entries from `seq` on carry a MAC).
CREATE TABLE markers (
    kind TEXT PRIMARY KEY NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    at TIMESTAMP NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
);
