-- Memo keys: a step result stored under a key that every job shares.
-- A row is 'computing' while one run owns the key (the others wait), then 'done'.

CREATE TABLE stepstone_memos (
    key         TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('computing', 'done')),
    step        TEXT NOT NULL,
    value       TEXT,
    owner_job   TEXT,
    owner_fence INTEGER,
    expires_at  REAL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
) WITHOUT ROWID;

CREATE INDEX stepstone_memos_expiry ON stepstone_memos (expires_at)
    WHERE expires_at IS NOT NULL;

-- A checkpoint written from or into a memo names its key.
ALTER TABLE stepstone_checkpoints ADD COLUMN memo TEXT;
