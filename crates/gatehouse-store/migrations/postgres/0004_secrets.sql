-- The secrets broker. Values are sealed (AES-256-GCM) by gatehouse-secrets under a data key of
-- their own secret; the data key is stored wrapped by a master key that never reaches the store.
-- Nothing here is a value in clear.
CREATE TABLE secrets (
    path          TEXT    PRIMARY KEY,
    dek           BYTEA   NOT NULL,   -- the data key, wrapped by the master key `kek`
    kek           TEXT    NOT NULL,   -- which master key wrapped it (a key id, not the key)
    tags          TEXT    NOT NULL,   -- JSON object of at most 15 string tags
    max_versions  BIGINT  NOT NULL,   -- versions kept; older ones are deleted
    latest        BIGINT  NOT NULL,   -- the newest version's number
    created_at    BIGINT  NOT NULL,   -- seconds since the epoch
    updated_at    BIGINT  NOT NULL,
    deleted_at    BIGINT,            -- soft-deleted: recoverable until purge_at
    deleted_by    TEXT,
    purge_at      BIGINT
);
CREATE INDEX secrets_purge ON secrets (purge_at);

CREATE TABLE secret_versions (
    path        TEXT    NOT NULL REFERENCES secrets (path) ON DELETE CASCADE,
    version     BIGINT  NOT NULL,
    sealed      BYTEA   NOT NULL,     -- nonce, ciphertext and tag under the data key
    enabled     BOOLEAN NOT NULL,
    not_before  BIGINT,              -- seconds since the epoch
    expires_at  BIGINT,
    created_at  BIGINT  NOT NULL,
    created_by  TEXT    NOT NULL,
    PRIMARY KEY (path, version)
);
