-- Memo keys: a step result stored under a key that every job shares.
-- A row is 'computing' while one run owns the key (the others wait), then 'done'.

CREATE TABLE {schema}.memos (
    key         text PRIMARY KEY,
    state       text NOT NULL CHECK (state IN ('computing', 'done')),
    step        text NOT NULL,
    value       json,
    owner_job   text,
    owner_fence bigint,
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE INDEX memos_expiry ON {schema}.memos (expires_at) WHERE expires_at IS NOT NULL;

-- A checkpoint written from or into a memo names its key.
ALTER TABLE {schema}.checkpoints ADD COLUMN memo text;
