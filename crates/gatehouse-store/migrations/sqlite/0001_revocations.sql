-- The revocation log: every revocation made or lifted, in order. Nodes replay it from the
-- sequence number they last applied; nothing is ever updated in place.
CREATE TABLE revocation_log (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    lift    INTEGER NOT NULL CHECK (lift IN (0, 1)),
    kind    TEXT    NOT NULL,
    value   TEXT    NOT NULL,
    reason  TEXT    NOT NULL,
    actor   TEXT    NOT NULL,
    at      INTEGER NOT NULL,   -- seconds since the epoch
    until   INTEGER             -- the revocation lapses after this; NULL: never
);
CREATE INDEX revocation_log_kind_value ON revocation_log (kind, value, seq);
