-- Time, events and flow control: parked jobs (durable sleep, signals, child jobs),
-- concurrency limits, debounce, cron schedules and rate limits.

ALTER TABLE {schema}.jobs
    ADD COLUMN parent_id text,
    ADD COLUMN wait_event text,
    ADD COLUMN concurrency_key text,
    ADD COLUMN concurrency_limit integer,
    ADD COLUMN debounce_key text;

-- Waiting jobs come due at their run_at (a timer) like queued ones.
DROP INDEX {schema}.jobs_due;
CREATE INDEX jobs_due ON {schema}.jobs (priority DESC, run_at)
    WHERE state IN ('queued', 'waiting');
CREATE INDEX jobs_waiting ON {schema}.jobs (wait_event) WHERE state = 'waiting';
CREATE INDEX jobs_children ON {schema}.jobs (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX jobs_limited ON {schema}.jobs (concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;
CREATE UNIQUE INDEX jobs_debounce ON {schema}.jobs (debounce_key)
    WHERE state = 'queued' AND debounce_key IS NOT NULL;

CREATE TABLE {schema}.signals (
    id         bigserial PRIMARY KEY,
    event      text NOT NULL,
    payload    json NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX signals_event ON {schema}.signals (event, id);

CREATE TABLE {schema}.schedules (
    name       text PRIMARY KEY,
    next_tick  timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

-- Rate limits: the times of the calls in the last window, per key (a JSON array).
CREATE TABLE {schema}.rates (
    key   text PRIMARY KEY,
    calls json NOT NULL
);

CREATE OR REPLACE VIEW {schema}.job_records AS
SELECT id, name, queue, key, args::text AS args, state, priority,
       extract(epoch FROM run_at)::float8 AS run_at, attempts, fence, reclaims, lease_owner,
       extract(epoch FROM lease_expires_at)::float8 AS lease_expires_at,
       result::text AS result, error::text AS error,
       extract(epoch FROM created_at)::float8 AS created_at,
       extract(epoch FROM updated_at)::float8 AS updated_at,
       extract(epoch FROM started_at)::float8 AS started_at,
       extract(epoch FROM finished_at)::float8 AS finished_at,
       parent_id, wait_event
FROM {schema}.jobs;

-- A job waiting for another job is woken, in the same transaction, when that job ends.
-- (Each command of the function sees a fresh snapshot: a park committed while the
-- finishing statement ran is seen.)
CREATE FUNCTION {schema}.wake_waiters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'UPDATE %I.jobs SET state = ''queued'', run_at = $1, updated_at = $1 '
        'WHERE state = ''waiting'' AND wait_event = $2', TG_TABLE_SCHEMA)
    USING NEW.updated_at, 'stepstone.job:' || NEW.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_wake_waiters
    AFTER UPDATE OF state ON {schema}.jobs
    FOR EACH ROW WHEN (NEW.state IN ('succeeded', 'failed', 'cancelled')
                       AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION {schema}.wake_waiters();
