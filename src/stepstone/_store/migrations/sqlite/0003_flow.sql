-- Time, events and flow control: parked jobs (durable sleep, signals, child jobs),
-- concurrency limits, debounce, cron schedules and rate limits.

-- The job that enqueued this one (cancelling a parent cancels its children).
ALTER TABLE stepstone_jobs ADD COLUMN parent_id TEXT;
-- What a waiting job waits for: an event name, or 'stepstone.job:<id>' for a child job.
ALTER TABLE stepstone_jobs ADD COLUMN wait_event TEXT;
-- At most concurrency_limit running jobs (with a live lease) per concurrency_key.
ALTER TABLE stepstone_jobs ADD COLUMN concurrency_key TEXT;
ALTER TABLE stepstone_jobs ADD COLUMN concurrency_limit INTEGER;
-- A queued job that a later enqueue with the same debounce key replaces and delays.
ALTER TABLE stepstone_jobs ADD COLUMN debounce_key TEXT;

-- Waiting jobs come due at their run_at (a timer) like queued ones.
DROP INDEX stepstone_jobs_due;
CREATE INDEX stepstone_jobs_due ON stepstone_jobs (priority DESC, run_at)
    WHERE state IN ('queued', 'waiting');

CREATE INDEX stepstone_jobs_waiting ON stepstone_jobs (wait_event) WHERE state = 'waiting';

CREATE INDEX stepstone_jobs_children ON stepstone_jobs (parent_id) WHERE parent_id IS NOT NULL;

CREATE INDEX stepstone_jobs_limited ON stepstone_jobs (concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;

CREATE UNIQUE INDEX stepstone_jobs_debounce ON stepstone_jobs (debounce_key)
    WHERE state = 'queued' AND debounce_key IS NOT NULL;

-- Signals, kept so that a job that waits later still receives one sent after it was
-- enqueued; pruned with the jobs.
CREATE TABLE stepstone_signals (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    event      TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at REAL NOT NULL
);

CREATE INDEX stepstone_signals_event ON stepstone_signals (event, id);

-- The next tick of each cron job.
CREATE TABLE stepstone_schedules (
    name       TEXT PRIMARY KEY,
    next_tick  REAL NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;

-- Rate limits: the times of the calls in the last window, per key (a JSON array).
CREATE TABLE stepstone_rates (
    key   TEXT PRIMARY KEY,
    calls TEXT NOT NULL
) WITHOUT ROWID;

-- A job waiting for another job is woken, in the same transaction, when that job ends.
CREATE TRIGGER stepstone_jobs_wake_waiters
AFTER UPDATE OF state ON stepstone_jobs
WHEN NEW.state IN ('succeeded', 'failed', 'cancelled') AND OLD.state <> NEW.state
BEGIN
    UPDATE stepstone_jobs
    SET state = 'queued', run_at = NEW.updated_at, updated_at = NEW.updated_at
    WHERE state = 'waiting' AND wait_event = 'stepstone.job:' || NEW.id;
END;
