-- Every query of the PostgreSQL store, once, by name. {schema} is the store's schema
-- (a quoted identifier, filled in when the store opens); values are always parameters.
-- Times travel as epoch seconds (float8) and are stored as timestamptz.

-- name: job_insert
INSERT INTO {schema}.jobs
    (id, name, queue, key, args, state, priority, run_at, fence, attempts,
     lease_owner, lease_expires_at, created_at, updated_at, started_at)
VALUES
    (%(id)s, %(name)s, %(queue)s, %(key)s, %(args)s, %(state)s, %(priority)s,
     to_timestamp(%(run_at)s), %(fence)s, %(attempts)s, %(owner)s,
     to_timestamp(%(lease_until)s), to_timestamp(%(now)s), to_timestamp(%(now)s),
     to_timestamp(%(started_at)s))
ON CONFLICT (key) DO NOTHING;

-- name: job_get
SELECT * FROM {schema}.job_records WHERE id = %(id)s;

-- name: job_get_by_key
SELECT * FROM {schema}.job_records WHERE key = %(key)s;

-- name: job_list
SELECT * FROM {schema}.job_records
WHERE (%(any_state)s OR state = ANY(%(states)s::text[]))
  AND (%(name)s::text IS NULL OR name = %(name)s)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- name: job_claim_due
WITH due AS (
    SELECT id FROM {schema}.jobs
    WHERE state = 'queued' AND run_at <= to_timestamp(%(now)s)
      AND name = ANY(%(names)s::text[])
      AND (%(any_queue)s OR queue = ANY(%(queues)s::text[]))
    ORDER BY priority DESC, run_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
UPDATE {schema}.jobs AS j
SET state = 'running', fence = j.fence + 1,
    attempts = j.attempts + CASE WHEN j.replay THEN 0 ELSE 1 END, replay = false,
    lease_owner = %(owner)s, lease_expires_at = to_timestamp(%(lease_until)s),
    updated_at = to_timestamp(%(now)s), started_at = coalesce(j.started_at, to_timestamp(%(now)s))
FROM due
WHERE j.id = due.id
RETURNING j.id, j.name, j.queue, j.key, j.args::text AS args, j.fence, j.attempts, j.priority,
          extract(epoch FROM j.run_at)::float8 AS run_at;

-- name: job_claim
UPDATE {schema}.jobs AS j
SET state = 'running', fence = j.fence + 1,
    attempts = j.attempts + CASE WHEN j.replay THEN 0 ELSE 1 END, replay = false,
    lease_owner = %(owner)s, lease_expires_at = to_timestamp(%(lease_until)s),
    updated_at = to_timestamp(%(now)s), started_at = coalesce(j.started_at, to_timestamp(%(now)s))
WHERE j.id = %(id)s AND j.state = 'queued'
RETURNING j.id, j.name, j.queue, j.key, j.args::text AS args, j.fence, j.attempts, j.priority,
          extract(epoch FROM j.run_at)::float8 AS run_at;

-- name: job_idle_status
SELECT
    EXISTS (SELECT 1 FROM {schema}.jobs
            WHERE state = 'queued' AND run_at <= to_timestamp(%(now)s)
              AND name = ANY(%(names)s::text[]) AND (%(any_queue)s OR queue = ANY(%(queues)s::text[]))) AS due,
    (SELECT count(*) FROM {schema}.jobs
     WHERE state = 'running'
       AND name = ANY(%(names)s::text[]) AND (%(any_queue)s OR queue = ANY(%(queues)s::text[]))) AS running,
    (SELECT extract(epoch FROM min(run_at))::float8 FROM {schema}.jobs
     WHERE state = 'queued'
       AND name = ANY(%(names)s::text[]) AND (%(any_queue)s OR queue = ANY(%(queues)s::text[]))) AS next_run_at;

-- name: job_heartbeat
UPDATE {schema}.jobs AS j
SET lease_expires_at = to_timestamp(%(lease_until)s)
FROM unnest(%(ids)s::text[], %(fences)s::bigint[]) AS lease (id, fence)
WHERE j.id = lease.id AND j.fence = lease.fence AND j.state = 'running'
RETURNING j.id;

-- name: job_expired_leases
SELECT j.id, j.fence, j.attempts, j.reclaims,
       EXISTS (SELECT 1 FROM {schema}.checkpoints AS c
               WHERE c.job_id = j.id AND c.fence = j.fence) AS progressed
FROM {schema}.jobs AS j
WHERE j.state = 'running' AND j.lease_expires_at < to_timestamp(%(now)s)
ORDER BY j.lease_expires_at
LIMIT %(limit)s
FOR UPDATE OF j SKIP LOCKED;

-- name: job_requeue_expired
UPDATE {schema}.jobs
SET state = 'queued', replay = true, run_at = to_timestamp(%(now)s), reclaims = %(reclaims)s,
    lease_owner = NULL, lease_expires_at = NULL,
    updated_at = to_timestamp(%(now)s)
WHERE id = %(id)s AND fence = %(fence)s AND state = 'running';

-- name: job_fail_poison
UPDATE {schema}.jobs
SET state = 'failed', error = %(error)s, reclaims = %(reclaims)s, lease_owner = NULL,
    lease_expires_at = NULL, updated_at = to_timestamp(%(now)s), finished_at = to_timestamp(%(now)s)
WHERE id = %(id)s AND fence = %(fence)s AND state = 'running';

-- name: job_complete
UPDATE {schema}.jobs
SET state = 'succeeded', result = %(result)s, lease_owner = NULL, lease_expires_at = NULL,
    updated_at = to_timestamp(%(now)s), finished_at = to_timestamp(%(now)s)
WHERE id = %(id)s AND fence = %(fence)s AND state = 'running';

-- name: job_fail
UPDATE {schema}.jobs
SET state = 'failed', error = %(error)s, lease_owner = NULL, lease_expires_at = NULL,
    updated_at = to_timestamp(%(now)s), finished_at = to_timestamp(%(now)s)
WHERE id = %(id)s AND fence = %(fence)s AND state = 'running';

-- name: job_retry_later
UPDATE {schema}.jobs
SET state = 'queued', error = %(error)s, run_at = to_timestamp(%(run_at)s), replay = false,
    reclaims = 0, lease_owner = NULL, lease_expires_at = NULL,
    updated_at = to_timestamp(%(now)s)
WHERE id = %(id)s AND fence = %(fence)s AND state = 'running';

-- name: job_release
UPDATE {schema}.jobs
SET state = 'queued', replay = true, run_at = to_timestamp(%(now)s), lease_owner = NULL,
    lease_expires_at = NULL, updated_at = to_timestamp(%(now)s)
WHERE id = %(id)s AND fence = %(fence)s AND state = 'running';

-- name: job_cancel
UPDATE {schema}.jobs
SET state = 'cancelled', lease_owner = NULL, lease_expires_at = NULL,
    updated_at = to_timestamp(%(now)s), finished_at = to_timestamp(%(now)s)
WHERE id = %(id)s AND state IN ('queued', 'running', 'waiting');

-- name: job_requeue
UPDATE {schema}.jobs
SET state = 'queued', run_at = to_timestamp(%(now)s), attempts = 0, replay = false,
    reclaims = 0, lease_owner = NULL, lease_expires_at = NULL,
    updated_at = to_timestamp(%(now)s), finished_at = NULL
WHERE id = %(id)s AND state IN ('failed', 'cancelled');

-- name: job_owner
SELECT state, fence FROM {schema}.jobs WHERE id = %(id)s;

-- name: job_prune
WITH doomed AS (
    SELECT id FROM {schema}.jobs
    WHERE finished_at < to_timestamp(%(before)s)
      AND state IN ('succeeded', 'failed', 'cancelled')
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED),
gone_checkpoints AS (
    DELETE FROM {schema}.checkpoints WHERE job_id IN (SELECT id FROM doomed)),
gone_errors AS (
    DELETE FROM {schema}.errors WHERE job_id IN (SELECT id FROM doomed))
DELETE FROM {schema}.jobs WHERE id IN (SELECT id FROM doomed);

-- name: checkpoint_list
SELECT seq, name, status, value::text AS value, attempts,
       extract(epoch FROM created_at)::float8 AS created_at
FROM {schema}.checkpoints WHERE job_id = %(job_id)s ORDER BY seq;

-- name: checkpoint_insert
-- The owner row is share-locked, so a claim or rescue of the job waits for this insert
-- and a stale fence inserts nothing. Checkpoints commit without waiting for the WAL
-- flush unless the store is opened with durability "full".
WITH owner AS (
    SELECT id FROM {schema}.jobs
    WHERE id = %(job_id)s AND fence = %(fence)s AND state = 'running'
    FOR SHARE),
commit_mode AS (
    SELECT set_config('synchronous_commit', %(synchronous_commit)s, true) AS setting)
INSERT INTO {schema}.checkpoints (job_id, seq, name, status, value, attempts, fence, created_at)
SELECT owner.id, %(seq)s, %(name)s, %(status)s, %(value)s, %(attempts)s, %(fence)s,
       to_timestamp(%(now)s)
FROM owner, commit_mode;

-- name: checkpoint_get
SELECT fence, status, value::text AS value FROM {schema}.checkpoints
WHERE job_id = %(job_id)s AND seq = %(seq)s;

-- name: checkpoint_drop_from_first_error
DELETE FROM {schema}.checkpoints
WHERE job_id = %(job_id)s AND seq >= (
    SELECT min(seq) FROM {schema}.checkpoints WHERE job_id = %(job_id)s AND status = 'error');

-- name: error_insert
WITH owner AS (
    SELECT id FROM {schema}.jobs
    WHERE id = %(job_id)s AND fence = %(fence)s AND state = 'running'
    FOR SHARE)
INSERT INTO {schema}.errors (job_id, attempt, seq, step, fence, error, created_at)
SELECT owner.id, %(attempt)s, %(seq)s, %(step)s, %(fence)s, %(error)s, to_timestamp(%(now)s)
FROM owner;

-- name: error_insert_unfenced
INSERT INTO {schema}.errors (job_id, attempt, seq, step, fence, error, created_at)
VALUES (%(job_id)s, %(attempt)s, NULL, NULL, %(fence)s, %(error)s, to_timestamp(%(now)s));

-- name: error_list
SELECT attempt, seq, step, error::text AS error,
       extract(epoch FROM created_at)::float8 AS created_at
FROM {schema}.errors WHERE job_id = %(job_id)s ORDER BY id;
