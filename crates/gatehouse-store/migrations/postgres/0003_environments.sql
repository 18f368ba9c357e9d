-- Ephemeral environments: credentials bound to one (an RFC 8693 exchange names it) live no
-- longer than it, and ending it revokes them all (a revocation of kind environment).
CREATE TABLE environments (
    id          TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL,
    created_by  TEXT    NOT NULL,
    created_at  BIGINT NOT NULL,   -- seconds since the epoch
    expires_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    ended_by    TEXT
);
