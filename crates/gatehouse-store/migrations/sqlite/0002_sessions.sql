-- Browser sessions (and other short-lived sealed records), shared by every node. The value is
-- sealed by gatehouse-session (AES-256-GCM) before it gets here; the key is a SHA-256 of the id.
-- A lease (holder, until in milliseconds) serialises renewal across nodes.
CREATE TABLE session_records (
    kind        TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,   -- seconds since the epoch
    value       BLOB    NOT NULL,
    lease_holder TEXT,
    lease_until  INTEGER,            -- milliseconds since the epoch
    PRIMARY KEY (kind, key)
);
CREATE INDEX session_records_expiry ON session_records (expires_at);
