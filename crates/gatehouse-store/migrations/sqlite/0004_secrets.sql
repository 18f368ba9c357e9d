-- The secrets broker. Values are sealed (AES-256-GCM) by gatehouse-secrets under a data key of
-- their own secret; the data key is stored wrapped by a master key that never reaches the store.
-- Nothing here is a value in clear.
CREATE TABLE secrets (
    path          TEXT    PRIMARY KEY,
    dek           BLOB    NOT NULL,   -- the data key, wrapped by the master key `kek`
    kek           TEXT    NOT NULL,   -- which master key wrapped it (a key id, not the key)
    tags          TEXT    NOT NULL,   -- JSON object of at most 15 string tags
    max_versions  INTEGER NOT NULL,   -- versions kept; older ones are deleted
    latest        INTEGER NOT NULL,   -- the newest version's number
    created_at    INTEGER NOT NULL,   -- seconds since the epoch
    updated_at    INTEGER NOT NULL,
    deleted_at    INTEGER,            -- soft-deleted: recoverable until purge_at
    deleted_by    TEXT,
    purge_at      INTEGER
);
CREATE INDEX secrets_purge ON secrets (purge_at);

CREATE TABLE secret_versions (
    path        TEXT    NOT NULL REFERENCES secrets (path) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    sealed      BLOB    NOT NULL,     -- nonce, ciphertext and tag under the data key
    enabled     INTEGER NOT NULL,     -- 0/1
    not_before  INTEGER,              -- seconds since the epoch
    expires_at  INTEGER,
    created_at  INTEGER NOT NULL,
    created_by  TEXT    NOT NULL,
    PRIMARY KEY (path, version)
);
