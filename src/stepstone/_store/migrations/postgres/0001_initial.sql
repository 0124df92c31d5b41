-- Jobs, their step checkpoints and the errors of their attempts, in their own schema.
-- {schema} is replaced by the store's schema (a quoted identifier) when this runs.

CREATE TABLE {schema}.jobs (
    id               text PRIMARY KEY,
    name             text NOT NULL,
    queue            text NOT NULL,
    key              text UNIQUE,
    args             json NOT NULL,
    state            text NOT NULL CHECK (state IN
                         ('queued', 'running', 'waiting', 'succeeded', 'failed', 'cancelled')),
    priority         integer NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    replay           boolean NOT NULL DEFAULT false,
    fence            bigint NOT NULL DEFAULT 0,
    reclaims         integer NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    result           json,
    error            json,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz
);

-- Claims read only queued rows: the partial index stays small however many finished
-- jobs the table holds.
CREATE INDEX jobs_due ON {schema}.jobs (priority DESC, run_at) WHERE state = 'queued';
CREATE INDEX jobs_leases ON {schema}.jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_finished ON {schema}.jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_created ON {schema}.jobs (created_at);

CREATE TABLE {schema}.checkpoints (
    job_id     text NOT NULL,
    seq        integer NOT NULL,
    name       text NOT NULL,
    status     text NOT NULL CHECK (status IN ('ok', 'error')),
    value      json NOT NULL,
    attempts   integer NOT NULL,
    fence      bigint NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE {schema}.errors (
    id         bigserial PRIMARY KEY,
    job_id     text NOT NULL,
    attempt    integer NOT NULL,
    seq        integer,
    step       text,
    fence      bigint NOT NULL,
    error      json NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE INDEX errors_job ON {schema}.errors (job_id, id);

-- Operators read times as timestamps; the store reads them as epoch seconds.
CREATE VIEW {schema}.job_records AS
SELECT id, name, queue, key, args::text AS args, state, priority,
       extract(epoch FROM run_at)::float8 AS run_at, attempts, fence, reclaims, lease_owner,
       extract(epoch FROM lease_expires_at)::float8 AS lease_expires_at,
       result::text AS result, error::text AS error,
       extract(epoch FROM created_at)::float8 AS created_at,
       extract(epoch FROM updated_at)::float8 AS updated_at,
       extract(epoch FROM started_at)::float8 AS started_at,
       extract(epoch FROM finished_at)::float8 AS finished_at
FROM {schema}.jobs;

-- Wakes idle workers (LISTEN) when a job becomes queued. The channel is per schema.
CREATE FUNCTION {schema}.notify_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stepstone:' || TG_TABLE_SCHEMA, NEW.queue);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify_queued
    AFTER INSERT OR UPDATE OF state ON {schema}.jobs
    FOR EACH ROW WHEN (NEW.state = 'queued')
    EXECUTE FUNCTION {schema}.notify_queued();
