-- Webhook deliveries (the relay): each delivery a configured hook accepted, committed before the
-- forge got its 2xx, kept until every target has it or gave up on it, then pruned.
CREATE TABLE hook_deliveries (
    seq          BIGSERIAL PRIMARY KEY, -- accept order (a target may take one repository's in order)
    id           TEXT    NOT NULL UNIQUE,  -- whd_<uuid v7>: the idempotency id every target sees
    hook         TEXT    NOT NULL,         -- the configured hook's name
    source_id    TEXT    NOT NULL,         -- the sender's delivery id (X-Gitea-Delivery, webhook-id, ...)
    scheme       TEXT    NOT NULL,         -- how it was signed: gitea, forgejo, gogs, github, standard
    event        TEXT    NOT NULL,         -- push, pull_request, workflow_job, ...
    repo         TEXT,                     -- owner/name, as the payload names it
    sender       TEXT,                     -- the forge account the payload names
    headers      TEXT    NOT NULL,         -- the event headers relayed, one "Name: value" per line
    body         BYTEA   NOT NULL,         -- the exact bytes the sender signed
    annotation   TEXT,                     -- what Gatehouse adds (JSON): the push's verified pusher, or none
    received_at  BIGINT NOT NULL             -- seconds since the epoch
);
CREATE INDEX hook_deliveries_received ON hook_deliveries (received_at);

-- One row per (delivery, target): where relaying it stands.
CREATE TABLE hook_attempts (
    delivery_seq BIGINT NOT NULL,
    target       TEXT    NOT NULL,
    repo_key     TEXT,                     -- set for a target that takes a repository's deliveries in order
    state        TEXT    NOT NULL,         -- pending, delivered, dead
    attempts     BIGINT NOT NULL DEFAULT 0,
    next_at      BIGINT NOT NULL,         -- not before
    give_up_at   BIGINT NOT NULL,         -- dead once a failure comes after this
    claim        TEXT,                     -- the worker sending it now, and until when
    claimed_until BIGINT,
    last_status  BIGINT,                  -- the target's last HTTP status
    last_error   TEXT,                     -- or why there was none
    delivered_at BIGINT,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (delivery_seq, target)
);
CREATE INDEX hook_attempts_due ON hook_attempts (state, next_at);
CREATE INDEX hook_attempts_order ON hook_attempts (target, repo_key, delivery_seq);

-- Delivery ids seen per hook within the replay window: a second delivery with one is refused.
CREATE TABLE hook_seen (
    hook         TEXT    NOT NULL,
    source_id    TEXT    NOT NULL,
    seen_at      BIGINT NOT NULL,
    PRIMARY KEY (hook, source_id)
);
CREATE INDEX hook_seen_at ON hook_seen (seen_at);

-- The push index learns each update's old object id and the pusher's identity, so a push event
-- (before, after) is matched to the push Gatehouse allowed, and names who made it.
ALTER TABLE push_index ADD COLUMN old_id TEXT;
ALTER TABLE push_index ADD COLUMN pusher_issuer TEXT;
ALTER TABLE push_index ADD COLUMN pusher_subject TEXT;
