-- The revocation log: every revocation made or lifted, in order. Nodes replay it from the
-- sequence number they last applied; nothing is ever updated in place. Writers take a table lock
-- (see gatehouse-store), so sequence numbers become visible in the order they were given out.
CREATE TABLE revocation_log (
    seq     BIGSERIAL PRIMARY KEY,
    lift    BOOLEAN NOT NULL,
    kind    TEXT    NOT NULL,
    value   TEXT    NOT NULL,
    reason  TEXT    NOT NULL,
    actor   TEXT    NOT NULL,
    at      BIGINT  NOT NULL,   -- seconds since the epoch
    until   BIGINT              -- the revocation lapses after this; NULL: never
);
CREATE INDEX revocation_log_kind_value ON revocation_log (kind, value, seq);
