-- Every query of the PostgreSQL store, once, by name. {schema} is the store's schema
-- (a quoted identifier, filled in when the store opens); values are always parameters.
-- Times travel as epoch seconds (float8) and are stored as timestamptz.

-- name: job_insert
-- One job row: single insert, on the caller's connection, debounce (job_insert_many takes
-- the same columns as arrays).
INSERT INTO {schema}.jobs
    (id, name, queue, key, args, state, priority, run_at, fence, attempts,
     lease_owner, lease_expires_at, created_at, updated_at, started_at,
     parent_id, concurrency_key, concurrency_limit, debounce_key)
VALUES
    (%(id)s, %(name)s, %(queue)s, %(key)s, %(args)s, %(state)s, %(priority)s,
     to_timestamp(%(run_at)s), %(fence)s, %(attempts)s, %(owner)s,
     to_timestamp(%(lease_until)s), to_timestamp(%(now)s), to_timestamp(%(now)s),
     to_timestamp(%(started_at)s),
     %(parent_id)s, %(concurrency_key)s, %(concurrency_limit)s, %(debounce_key)s)
ON CONFLICT (key) DO NOTHING;

-- name: job_insert_many
-- Bulk insert: the columns of job_insert, each travelling as an array named as the
-- parameter ``rows.insert_params`` builds; returns the ids inserted (a taken key inserts
-- nothing). tests/store/test_insert_paths.py checks that both carry every job field.
INSERT INTO {schema}.jobs
    (id, name, queue, key, args, state, priority, run_at, fence, attempts,
     lease_owner, lease_expires_at, created_at, updated_at, started_at,
     parent_id, concurrency_key, concurrency_limit, debounce_key)
SELECT id, name, queue, key, args::json, state, priority, to_timestamp(run_at), fence,
       attempts, owner, to_timestamp(lease_until), to_timestamp(now), to_timestamp(now),
       to_timestamp(started_at), parent_id, concurrency_key, concurrency_limit, debounce_key
FROM unnest(%(id)s::text[], %(name)s::text[], %(queue)s::text[], %(key)s::text[],
            %(args)s::text[], %(state)s::text[], %(priority)s::int[], %(run_at)s::float8[],
            %(fence)s::bigint[], %(attempts)s::int[], %(owner)s::text[],
            %(lease_until)s::float8[], %(now)s::float8[], %(started_at)s::float8[],
            %(parent_id)s::text[], %(concurrency_key)s::text[], %(concurrency_limit)s::int[],
            %(debounce_key)s::text[])
     AS new (id, name, queue, key, args, state, priority, run_at, fence, attempts, owner,
             lease_until, now, started_at, parent_id, concurrency_key, concurrency_limit,
             debounce_key)
ON CONFLICT (key) DO NOTHING
RETURNING id;

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
-- Jobs without a concurrency limit; limited ones are claimed by job_claim_limited.
WITH due AS (
    SELECT id FROM {schema}.jobs
    WHERE state IN ('queued', 'waiting') AND run_at <= to_timestamp(%(now)s)
      AND name = ANY(%(names)s::text[])
      AND (%(any_queue)s OR queue = ANY(%(queues)s::text[]))
      AND (concurrency_key IS NULL OR NOT (name = ANY(%(limited)s::text[])))
    ORDER BY priority DESC, run_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
UPDATE {schema}.jobs AS j
SET state = 'running', fence = j.fence + 1,
    attempts = j.attempts + CASE WHEN j.replay THEN 0 ELSE 1 END, replay = false,
    lease_owner = %(owner)s, lease_expires_at = to_timestamp(%(lease_until)s),
    updated_at = to_timestamp(%(now)s), started_at = coalesce(j.started_at, to_timestamp(%(now)s)),
    wait_event = NULL, debounce_key = NULL
FROM due
WHERE j.id = due.id
RETURNING j.id, j.name, j.queue, j.key, j.args::text AS args, j.fence, j.attempts, j.priority,
          extract(epoch FROM j.run_at)::float8 AS run_at,
          extract(epoch FROM j.created_at)::float8 AS created_at,
          extract(epoch FROM j.started_at)::float8 AS started_at;

-- name: unlimited_due_ranks
-- The priority and due time of the best due jobs without a limit, read (not locked) so that
-- a claim of limited jobs leaves their places to them.
SELECT priority, extract(epoch FROM run_at)::float8 AS run_at FROM {schema}.jobs
WHERE state IN ('queued', 'waiting') AND run_at <= to_timestamp(%(now)s)
  AND name = ANY(%(names)s::text[])
  AND (%(any_queue)s OR queue = ANY(%(queues)s::text[]))
  AND (concurrency_key IS NULL OR NOT (name = ANY(%(limited)s::text[])))
ORDER BY priority DESC, run_at
LIMIT %(limit)s;

-- name: limited_due_keys
-- The concurrency keys of due limited jobs that are below their limit.
SELECT DISTINCT j.concurrency_key AS key FROM {schema}.jobs AS j
WHERE j.state IN ('queued', 'waiting') AND j.run_at <= to_timestamp(%(now)s)
  AND j.name = ANY(%(limited)s::text[])
  AND (%(any_queue)s OR j.queue = ANY(%(queues)s::text[]))
  AND j.concurrency_key IS NOT NULL
  AND (SELECT count(*) FROM {schema}.jobs AS r
       WHERE r.state = 'running' AND r.concurrency_key = j.concurrency_key
         AND r.lease_expires_at >= to_timestamp(%(now)s)) < j.concurrency_limit
LIMIT 100;

-- name: limit_locks
-- Transaction-level locks on the keys no other claimer holds; the claim that follows (a
-- new statement, so a new snapshot) counts their running jobs exactly.
SELECT key FROM unnest(%(keys)s::text[]) AS key
WHERE pg_try_advisory_xact_lock(hashtext('stepstone-limit:{schema}:' || key));

-- name: job_claim_limited
WITH running AS (
    SELECT concurrency_key, count(*) AS n FROM {schema}.jobs
    WHERE state = 'running' AND concurrency_key = ANY(%(keys)s::text[])
      AND lease_expires_at >= to_timestamp(%(now)s)
    GROUP BY concurrency_key),
candidates AS (
    SELECT id, priority, run_at, concurrency_key, concurrency_limit FROM {schema}.jobs
    WHERE state IN ('queued', 'waiting') AND run_at <= to_timestamp(%(now)s)
      AND name = ANY(%(names)s::text[])
      AND (%(any_queue)s OR queue = ANY(%(queues)s::text[]))
      AND name = ANY(%(limited)s::text[])
      AND concurrency_key = ANY(%(keys)s::text[])
    ORDER BY priority DESC, run_at
    LIMIT %(scan)s
    FOR UPDATE SKIP LOCKED),
ranked AS (
    SELECT c.*, row_number() OVER (
        PARTITION BY c.concurrency_key ORDER BY c.priority DESC, c.run_at) AS rank
    FROM candidates AS c),
eligible AS (
    SELECT ranked.id, ranked.priority, ranked.run_at,
           row_number() OVER (ORDER BY ranked.priority DESC, ranked.run_at) AS position
    FROM ranked LEFT JOIN running USING (concurrency_key)
    WHERE ranked.rank + coalesce(running.n, 0) <= ranked.concurrency_limit),
due AS (
    -- A limited job is claimed only if it is among the best `limit` due jobs of both
    -- kinds: the unlimited jobs ranked ahead of it (read just before) take their places.
    SELECT e.id FROM eligible AS e
    WHERE e.position + (
        SELECT count(*) FROM unnest(%(ahead_priority)s::int[], %(ahead_run_at)s::float8[])
            AS a(priority, run_at)
        WHERE a.priority > e.priority
           OR (a.priority = e.priority AND a.run_at < extract(epoch FROM e.run_at))
    ) <= %(limit)s
    ORDER BY e.priority DESC, e.run_at
    LIMIT %(limit)s)
UPDATE {schema}.jobs AS j
SET state = 'running', fence = j.fence + 1,
    attempts = j.attempts + CASE WHEN j.replay THEN 0 ELSE 1 END, replay = false,
    lease_owner = %(owner)s, lease_expires_at = to_timestamp(%(lease_until)s),
    updated_at = to_timestamp(%(now)s), started_at = coalesce(j.started_at, to_timestamp(%(now)s)),
    wait_event = NULL, debounce_key = NULL
FROM due
WHERE j.id = due.id
RETURNING j.id, j.name, j.queue, j.key, j.args::text AS args, j.fence, j.attempts, j.priority,
          extract(epoch FROM j.run_at)::float8 AS run_at,
          extract(epoch FROM j.created_at)::float8 AS created_at,
          extract(epoch FROM j.started_at)::float8 AS started_at;

-- name: job_limit_key
SELECT concurrency_key FROM {schema}.jobs WHERE id = %(id)s;

-- name: limit_lock
SELECT pg_advisory_xact_lock(hashtext('stepstone-limit:{schema}:' || %(key)s));

-- name: job_claim
UPDATE {schema}.jobs AS j
SET state = 'running', fence = j.fence + 1,
    attempts = j.attempts + CASE WHEN j.replay THEN 0 ELSE 1 END, replay = false,
    lease_owner = %(owner)s, lease_expires_at = to_timestamp(%(lease_until)s),
    updated_at = to_timestamp(%(now)s), started_at = coalesce(j.started_at, to_timestamp(%(now)s)),
    wait_event = NULL, debounce_key = NULL
WHERE j.id = %(id)s AND j.state IN ('queued', 'waiting')
  AND (j.concurrency_key IS NULL
       OR (SELECT count(*) FROM {schema}.jobs AS r
           WHERE r.state = 'running' AND r.concurrency_key = j.concurrency_key
             AND r.lease_expires_at >= to_timestamp(%(now)s)) < j.concurrency_limit)
RETURNING j.id, j.name, j.queue, j.key, j.args::text AS args, j.fence, j.attempts, j.priority,
          extract(epoch FROM j.run_at)::float8 AS run_at,
          extract(epoch FROM j.created_at)::float8 AS created_at,
          extract(epoch FROM j.started_at)::float8 AS started_at;

-- name: job_idle_status
SELECT
    EXISTS (SELECT 1 FROM {schema}.jobs
            WHERE state IN ('queued', 'waiting') AND run_at <= to_timestamp(%(now)s)
              AND name = ANY(%(names)s::text[]) AND (%(any_queue)s OR queue = ANY(%(queues)s::text[]))) AS due,
    (SELECT count(*) FROM {schema}.jobs
     WHERE state = 'running'
       AND name = ANY(%(names)s::text[]) AND (%(any_queue)s OR queue = ANY(%(queues)s::text[]))) AS running,
    (SELECT extract(epoch FROM min(run_at))::float8 FROM {schema}.jobs
     WHERE state IN ('queued', 'waiting')
       AND name = ANY(%(names)s::text[]) AND (%(any_queue)s OR queue = ANY(%(queues)s::text[]))) AS next_run_at;

-- name: job_heartbeat
UPDATE {schema}.jobs AS j
SET lease_expires_at = to_timestamp(%(lease_until)s)
FROM unnest(%(ids)s::text[], %(fences)s::bigint[]) AS lease (id, fence)
WHERE j.id = lease.id AND j.fence = lease.fence AND j.state = 'running'
RETURNING j.id;

-- name: job_get_expired
SELECT j.id, j.fence, j.attempts, j.reclaims,
       EXISTS (SELECT 1 FROM {schema}.checkpoints AS c
               WHERE c.job_id = j.id AND c.fence = j.fence) AS progressed
FROM {schema}.jobs AS j
WHERE j.state = 'running' AND j.lease_expires_at < to_timestamp(%(now)s)
ORDER BY j.lease_expires_at
LIMIT %(limit)s;

-- name: job_requeue_expired
UPDATE {schema}.jobs
SET state = 'queued', replay = true, run_at = to_timestamp(%(now)s), reclaims = %(reclaims)s,
    lease_owner = NULL, lease_expires_at = NULL,
    updated_at = to_timestamp(%(now)s)
WHERE id = %(id)s AND fence = %(fence)s AND state = 'running'
  AND lease_expires_at < to_timestamp(%(now)s);

-- name: job_fail_poison
UPDATE {schema}.jobs
SET state = 'failed', error = %(error)s, reclaims = %(reclaims)s, lease_owner = NULL,
    lease_expires_at = NULL, updated_at = to_timestamp(%(now)s), finished_at = to_timestamp(%(now)s)
WHERE id = %(id)s AND fence = %(fence)s AND state = 'running'
  AND lease_expires_at < to_timestamp(%(now)s);

-- name: job_complete
UPDATE {schema}.jobs
SET state = 'succeeded', result = %(result)s, lease_owner = NULL, lease_expires_at = NULL,
    updated_at = to_timestamp(%(now)s), finished_at = to_timestamp(%(now)s)
WHERE id = %(id)s AND fence = %(fence)s AND state = 'running';

-- name: job_complete_many
-- Group commit of successes: one statement for every job whose run finished meanwhile.
UPDATE {schema}.jobs AS j
SET state = 'succeeded', result = done.result::json, lease_owner = NULL,
    lease_expires_at = NULL, updated_at = to_timestamp(%(now)s),
    finished_at = to_timestamp(%(now)s)
FROM unnest(%(ids)s::text[], %(fences)s::bigint[], %(results)s::text[])
     AS done (id, fence, result)
WHERE j.id = done.id AND j.fence = done.fence AND j.state = 'running'
RETURNING j.id;

-- name: job_owners
SELECT id, state, fence FROM {schema}.jobs WHERE id = ANY(%(ids)s::text[]);

-- name: job_ids
SELECT id FROM {schema}.jobs WHERE id = ANY(%(ids)s::text[]);

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
-- The job and, recursively, every unfinished job it enqueued (none if it had finished).
WITH RECURSIVE family (id) AS (
    SELECT id FROM {schema}.jobs WHERE id = %(id)s AND state IN ('queued', 'running', 'waiting')
    UNION
    SELECT child.id FROM {schema}.jobs AS child JOIN family ON child.parent_id = family.id)
UPDATE {schema}.jobs
SET state = 'cancelled', lease_owner = NULL, lease_expires_at = NULL,
    updated_at = to_timestamp(%(now)s), finished_at = to_timestamp(%(now)s)
WHERE id IN (SELECT id FROM family) AND state IN ('queued', 'running', 'waiting')
RETURNING id;

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

-- name: job_get_by_keys
SELECT * FROM {schema}.job_records WHERE key = ANY(%(keys)s::text[]);

-- name: job_get_many
SELECT * FROM {schema}.job_records WHERE id = ANY(%(ids)s::text[])
UNION ALL
SELECT * FROM {schema}.job_records WHERE key = ANY(%(keys)s::text[])
  AND NOT id = ANY(%(ids)s::text[]);

-- name: event_lock
SELECT pg_advisory_xact_lock(hashtext('stepstone-event:{schema}:' || %(event)s));

-- name: child_lock
SELECT state FROM {schema}.jobs WHERE id = %(child)s FOR SHARE;

-- name: job_park
UPDATE {schema}.jobs AS j
SET state = CASE WHEN ready.ready THEN 'queued' ELSE 'waiting' END,
    run_at = to_timestamp(CASE WHEN ready.ready THEN %(now)s ELSE %(until)s END),
    wait_event = %(event)s, replay = true, reclaims = 0, lease_owner = NULL,
    lease_expires_at = NULL, updated_at = to_timestamp(%(now)s)
FROM (SELECT
        (%(signal_event)s::text IS NOT NULL AND EXISTS (
            SELECT 1 FROM {schema}.signals AS s
            WHERE s.event = %(signal_event)s AND s.id > %(after)s
              AND s.created_at >= (SELECT created_at FROM {schema}.jobs WHERE id = %(id)s)))
        OR (%(child)s::text IS NOT NULL AND EXISTS (
            SELECT 1 FROM {schema}.jobs AS c
            WHERE c.id = %(child)s AND c.state IN ('succeeded', 'failed', 'cancelled')))
        AS ready) AS ready
WHERE j.id = %(id)s AND j.fence = %(fence)s AND j.state = 'running';

-- name: signal_insert
INSERT INTO {schema}.signals (event, payload, created_at)
VALUES (%(event)s, %(payload)s, to_timestamp(%(now)s));

-- name: signal_wake
UPDATE {schema}.jobs
SET state = 'queued', run_at = to_timestamp(%(now)s), updated_at = to_timestamp(%(now)s)
WHERE state = 'waiting' AND wait_event = %(event)s;

-- name: signal_next
SELECT id, payload::text AS payload FROM {schema}.signals
WHERE event = %(event)s AND id > %(after)s AND created_at >= to_timestamp(%(since)s)
ORDER BY id
LIMIT 1;

-- name: signal_prune
DELETE FROM {schema}.signals WHERE created_at < to_timestamp(%(before)s);

-- name: job_debounce
UPDATE {schema}.jobs
SET args = %(args)s, run_at = to_timestamp(%(run_at)s), queue = %(queue)s,
    priority = %(priority)s, updated_at = to_timestamp(%(now)s),
    concurrency_key = %(concurrency_key)s, concurrency_limit = %(concurrency_limit)s
WHERE debounce_key = %(debounce_key)s AND state = 'queued'
RETURNING id;

-- name: schedule_next
SELECT extract(epoch FROM next_tick)::float8 AS next_tick FROM {schema}.schedules
WHERE name = %(name)s;

-- name: schedule_insert
INSERT INTO {schema}.schedules (name, next_tick, updated_at)
VALUES (%(name)s, to_timestamp(%(tick)s), to_timestamp(%(now)s))
ON CONFLICT (name) DO NOTHING;

-- name: schedule_update
UPDATE {schema}.schedules
SET next_tick = to_timestamp(%(tick)s), updated_at = to_timestamp(%(now)s)
WHERE name = %(name)s AND next_tick = to_timestamp(%(expected)s);

-- name: schedule_list
SELECT name, extract(epoch FROM next_tick)::float8 AS next_tick FROM {schema}.schedules
ORDER BY name;

-- name: rate_lock
INSERT INTO {schema}.rates (key, calls) VALUES (%(key)s, '[]') ON CONFLICT (key) DO NOTHING;

-- name: rate_get
SELECT calls::text AS calls FROM {schema}.rates WHERE key = %(key)s FOR UPDATE;

-- name: rate_set
UPDATE {schema}.rates SET calls = %(calls)s WHERE key = %(key)s;
