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
       extract(epoch FROM created_at)::float8 AS created_at, memo
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
INSERT INTO {schema}.checkpoints
    (job_id, seq, name, status, value, attempts, fence, created_at, memo)
SELECT owner.id, %(seq)s, %(name)s, %(status)s, %(value)s, %(attempts)s, %(fence)s,
       to_timestamp(%(now)s), %(memo)s
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

-- name: memo_get
SELECT m.key, m.state, m.step, m.value::text AS value, m.owner_job, m.owner_fence,
       extract(epoch FROM m.expires_at)::float8 AS expires_at,
       extract(epoch FROM m.created_at)::float8 AS created_at,
       extract(epoch FROM m.updated_at)::float8 AS updated_at,
       coalesce(j.state = 'running' AND j.fence = m.owner_fence
                AND j.lease_expires_at >= to_timestamp(%(now)s), false) AS owner_alive
FROM {schema}.memos m LEFT JOIN {schema}.jobs j ON j.id = m.owner_job
WHERE m.key = %(key)s;

-- name: memo_get_for_update
SELECT m.key, m.state, m.step, m.value::text AS value, m.owner_job, m.owner_fence,
       extract(epoch FROM m.expires_at)::float8 AS expires_at,
       extract(epoch FROM m.created_at)::float8 AS created_at,
       extract(epoch FROM m.updated_at)::float8 AS updated_at,
       coalesce(j.state = 'running' AND j.fence = m.owner_fence
                AND j.lease_expires_at >= to_timestamp(%(now)s), false) AS owner_alive
FROM {schema}.memos m LEFT JOIN {schema}.jobs j ON j.id = m.owner_job
WHERE m.key = %(key)s
FOR UPDATE OF m;

-- name: memo_insert_claim
INSERT INTO {schema}.memos
    (key, state, step, value, owner_job, owner_fence, expires_at, created_at, updated_at)
VALUES (%(key)s, 'computing', %(step)s, NULL, %(job_id)s, %(fence)s, NULL,
        to_timestamp(%(now)s), to_timestamp(%(now)s))
ON CONFLICT (key) DO NOTHING;

-- name: memo_claim
UPDATE {schema}.memos
SET state = 'computing', step = %(step)s, value = NULL, owner_job = %(job_id)s,
    owner_fence = %(fence)s, expires_at = NULL, updated_at = to_timestamp(%(now)s)
WHERE key = %(key)s;

-- name: memo_store
INSERT INTO {schema}.memos
    (key, state, step, value, owner_job, owner_fence, expires_at, created_at, updated_at)
VALUES (%(key)s, 'done', %(step)s, %(value)s, %(job_id)s, %(fence)s,
        to_timestamp(%(expires_at)s), to_timestamp(%(now)s), to_timestamp(%(now)s))
ON CONFLICT (key) DO UPDATE
SET state = 'done', step = excluded.step, value = excluded.value,
    owner_job = excluded.owner_job, owner_fence = excluded.owner_fence,
    expires_at = excluded.expires_at, updated_at = excluded.updated_at
WHERE memos.state = 'computing' OR memos.expires_at <= to_timestamp(%(now)s);

-- name: memo_value
SELECT value::text AS value FROM {schema}.memos WHERE key = %(key)s AND state = 'done';

-- name: memo_release
DELETE FROM {schema}.memos
WHERE key = %(key)s AND state = 'computing' AND owner_job = %(job_id)s
  AND owner_fence = %(fence)s;

-- name: memo_forget
DELETE FROM {schema}.memos WHERE key = %(key)s;

-- name: memo_forget_prefix
DELETE FROM {schema}.memos WHERE starts_with(key, %(prefix)s);

-- name: memo_list
SELECT m.key, m.state, m.step, m.value::text AS value, m.owner_job, m.owner_fence,
       extract(epoch FROM m.expires_at)::float8 AS expires_at,
       extract(epoch FROM m.created_at)::float8 AS created_at,
       extract(epoch FROM m.updated_at)::float8 AS updated_at,
       false AS owner_alive
FROM {schema}.memos m
WHERE starts_with(m.key, %(prefix)s)
ORDER BY m.key
LIMIT %(limit)s;

-- name: memo_prune
DELETE FROM {schema}.memos
WHERE expires_at <= to_timestamp(%(now)s) AND state = 'done';

-- name: job_insert_many
INSERT INTO {schema}.jobs
    (id, name, queue, key, args, state, priority, run_at, fence, attempts,
     created_at, updated_at)
SELECT id, name, queue, key, args::json, 'queued', priority, to_timestamp(run_at), 0, 0,
       to_timestamp(%(now)s), to_timestamp(%(now)s)
FROM unnest(%(ids)s::text[], %(names)s::text[], %(queues)s::text[], %(keys)s::text[],
            %(args)s::text[], %(priorities)s::int[], %(run_ats)s::float8[])
     AS new (id, name, queue, key, args, priority, run_at)
ON CONFLICT (key) DO NOTHING
RETURNING id;

-- name: job_get_by_keys
SELECT * FROM {schema}.job_records WHERE key = ANY(%(keys)s::text[]);

-- name: job_get_many
SELECT * FROM {schema}.job_records WHERE id = ANY(%(ids)s::text[])
UNION ALL
SELECT * FROM {schema}.job_records WHERE key = ANY(%(keys)s::text[])
  AND NOT id = ANY(%(ids)s::text[]);
