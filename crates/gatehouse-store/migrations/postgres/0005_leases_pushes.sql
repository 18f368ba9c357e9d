-- Leases: each read of a secret's value, who read which version, until when. A lease never holds
-- the value; revoking it records that its holder is done with it (the job ended, `secret exec`'s
-- child exited) or must be treated as done.
CREATE TABLE secret_leases (
    id          TEXT    PRIMARY KEY,   -- lease_<random>
    path        TEXT    NOT NULL,
    version     BIGINT  NOT NULL,
    holder      TEXT    NOT NULL,      -- issuer and subject of the reader
    token_id    TEXT,                  -- the reader's credential id (jti), when it has one
    job_id      TEXT,                  -- the reader's CI job, when it is one
    issued_at   BIGINT  NOT NULL,      -- seconds since the epoch
    expires_at  BIGINT  NOT NULL,
    revoked_at  BIGINT,
    revoked_by  TEXT,
    reason      TEXT
);
CREATE INDEX secret_leases_job ON secret_leases (job_id);
CREATE INDEX secret_leases_path ON secret_leases (path);
CREATE INDEX secret_leases_expires ON secret_leases (expires_at);

-- The push index: every ref update of a push Gatehouse allowed, written once its audit record
-- was durable and before the push reached the forge (`confirmed_at` NULL), then confirmed when the
-- forge's report said `ok` for that ref. Provenance checks read the confirmed rows: did this
-- commit reach this ref through Gatehouse? One row per push (node and audit record).
CREATE TABLE push_index (
    repo         TEXT    NOT NULL,      -- owner/name, as the gateway names it
    ref          TEXT    NOT NULL,      -- refs/heads/main
    commit_id    TEXT    NOT NULL,      -- the new object id, lower-case hex
    node         TEXT    NOT NULL,      -- which gateway's audit log holds the record
    audit_seq    BIGINT  NOT NULL,      -- the forwarding record's sequence number there
    pushed_at    BIGINT  NOT NULL,
    pushed_by    TEXT    NOT NULL,      -- the pusher's user name
    confirmed_at BIGINT,               -- when the forge's report said ok
    PRIMARY KEY (repo, ref, commit_id, node, audit_seq)
);
CREATE INDEX push_index_at ON push_index (pushed_at);
CREATE INDEX push_index_seq ON push_index (node, audit_seq);
