-- Jobs, their step checkpoints and the errors of their attempts.

CREATE TABLE stepstone_jobs (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    queue            TEXT NOT NULL,
    key              TEXT UNIQUE,
    args             TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN
                         ('queued', 'running', 'waiting', 'succeeded', 'failed', 'cancelled')),
    priority         INTEGER NOT NULL DEFAULT 0,
    run_at           REAL NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    replay           INTEGER NOT NULL DEFAULT 0,
    fence            INTEGER NOT NULL DEFAULT 0,
    reclaims         INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at REAL,
    result           TEXT,
    error            TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL
);

CREATE INDEX stepstone_jobs_due ON stepstone_jobs (priority DESC, run_at)
    WHERE state = 'queued';

CREATE INDEX stepstone_jobs_leases ON stepstone_jobs (lease_expires_at)
    WHERE state = 'running';

CREATE INDEX stepstone_jobs_finished ON stepstone_jobs (finished_at)
    WHERE finished_at IS NOT NULL;

CREATE INDEX stepstone_jobs_created ON stepstone_jobs (created_at);

CREATE TABLE stepstone_checkpoints (
    job_id     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    value      TEXT NOT NULL,
    attempts   INTEGER NOT NULL,
    fence      INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;

CREATE TABLE stepstone_errors (
    id         INTEGER PRIMARY KEY,
    job_id     TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    seq        INTEGER,
    step       TEXT,
    fence      INTEGER NOT NULL,
    error      TEXT NOT NULL,
    created_at REAL NOT NULL
);

CREATE INDEX stepstone_errors_job ON stepstone_errors (job_id, id);
