-- Every query of the SQLite store, once, by name. Named parameters only.

-- name: job_insert
INSERT INTO stepstone_jobs
    (id, name, queue, key, args, state, priority, run_at, fence, attempts,
     lease_owner, lease_expires_at, created_at, updated_at, started_at,
     parent_id, concurrency_key, concurrency_limit, debounce_key)
VALUES
    (:id, :name, :queue, :key, :args, :state, :priority, :run_at, :fence, :attempts,
     :owner, :lease_until, :now, :now, :started_at,
     :parent_id, :concurrency_key, :concurrency_limit, :debounce_key)
ON CONFLICT (key) DO NOTHING;

-- name: job_get
SELECT * FROM stepstone_jobs WHERE id = :id;

-- name: job_get_by_key
SELECT * FROM stepstone_jobs WHERE key = :key;

-- name: job_get_many
SELECT * FROM stepstone_jobs
WHERE id IN (SELECT value FROM json_each(:ids)) OR key IN (SELECT value FROM json_each(:keys));

-- name: job_list
SELECT * FROM stepstone_jobs
WHERE (:any_state OR state IN (SELECT value FROM json_each(:states)))
  AND (:name IS NULL OR name = :name)
ORDER BY created_at DESC, id DESC
LIMIT :limit;

-- name: job_claim_due
-- Due jobs (queued, or waiting whose time came), highest priority then oldest first. A job
-- with a concurrency key is taken only while fewer than its limit run with a live lease:
-- keys already at their limit are skipped in the scan, and within one claim the jobs of a
-- key are ranked so that the claim itself stays under the limit. Runs inside BEGIN
-- IMMEDIATE, so the counts cannot change under it.
UPDATE stepstone_jobs
SET state = 'running', fence = fence + 1, attempts = attempts + 1 - replay, replay = 0,
    lease_owner = :owner, lease_expires_at = :lease_until, updated_at = :now,
    started_at = coalesce(started_at, :now), wait_event = NULL, debounce_key = NULL
WHERE id IN (
    SELECT id FROM (
        SELECT id, name, priority, run_at, concurrency_key, concurrency_limit,
               row_number() OVER (
                   PARTITION BY concurrency_key ORDER BY priority DESC, run_at) AS rank
        FROM (
            SELECT id, name, priority, run_at, concurrency_key, concurrency_limit
            FROM stepstone_jobs INDEXED BY stepstone_jobs_due
            WHERE state IN ('queued', 'waiting') AND run_at <= :now
              AND name IN (SELECT value FROM json_each(:names))
              AND (:any_queue OR queue IN (SELECT value FROM json_each(:queues)))
              AND (concurrency_key IS NULL
                   OR name NOT IN (SELECT value FROM json_each(:limited))
                   OR concurrency_key NOT IN (
                  SELECT r.concurrency_key FROM stepstone_jobs r INDEXED BY stepstone_jobs_limited
                  WHERE r.state = 'running' AND r.concurrency_key IS NOT NULL
                    AND r.lease_expires_at >= :now
                  GROUP BY r.concurrency_key
                  HAVING count(*) >= max(r.concurrency_limit)))
            ORDER BY priority DESC, run_at
            LIMIT :scan)) AS candidate
    WHERE concurrency_key IS NULL
       OR name NOT IN (SELECT value FROM json_each(:limited))
       OR rank + (SELECT count(*) FROM stepstone_jobs r INDEXED BY stepstone_jobs_limited
                  WHERE r.state = 'running' AND r.concurrency_key = candidate.concurrency_key
                    AND r.lease_expires_at >= :now) <= concurrency_limit
    ORDER BY priority DESC, run_at
    LIMIT :limit)
RETURNING id, name, queue, key, args, fence, attempts, priority, run_at, created_at, started_at;

-- name: job_claim
UPDATE stepstone_jobs
SET state = 'running', fence = fence + 1, attempts = attempts + 1 - replay, replay = 0,
    lease_owner = :owner, lease_expires_at = :lease_until, updated_at = :now,
    started_at = coalesce(started_at, :now), wait_event = NULL, debounce_key = NULL
WHERE id = :id AND state IN ('queued', 'waiting')
  AND (concurrency_key IS NULL
       OR (SELECT count(*) FROM stepstone_jobs r INDEXED BY stepstone_jobs_limited
           WHERE r.state = 'running' AND r.concurrency_key = stepstone_jobs.concurrency_key
             AND r.lease_expires_at >= :now) < concurrency_limit)
RETURNING id, name, queue, key, args, fence, attempts, priority, run_at, created_at, started_at;

-- name: job_idle_status
SELECT
    EXISTS (SELECT 1 FROM stepstone_jobs INDEXED BY stepstone_jobs_due
            WHERE state IN ('queued', 'waiting') AND run_at <= :now
              AND name IN (SELECT value FROM json_each(:names))
              AND (:any_queue OR queue IN (SELECT value FROM json_each(:queues))))
        AS due,
    (SELECT count(*) FROM stepstone_jobs INDEXED BY stepstone_jobs_leases
     WHERE state = 'running'
       AND name IN (SELECT value FROM json_each(:names))
       AND (:any_queue OR queue IN (SELECT value FROM json_each(:queues))))
        AS running,
    (SELECT min(run_at) FROM stepstone_jobs INDEXED BY stepstone_jobs_due
     WHERE state IN ('queued', 'waiting')
       AND name IN (SELECT value FROM json_each(:names))
       AND (:any_queue OR queue IN (SELECT value FROM json_each(:queues))))
        AS next_run_at;

-- name: job_heartbeat
-- Extends the leases of (id, fence) pairs, given as two JSON arrays; returns the ids kept.
UPDATE stepstone_jobs SET lease_expires_at = :lease_until
FROM (SELECT i.value AS id, f.value AS fence
      FROM json_each(:ids) AS i JOIN json_each(:fences) AS f ON f.key = i.key) AS lease
WHERE stepstone_jobs.id = lease.id AND stepstone_jobs.fence = lease.fence
  AND stepstone_jobs.state = 'running'
RETURNING stepstone_jobs.id;

-- name: job_get_expired
SELECT id, fence, attempts, reclaims,
       EXISTS (SELECT 1 FROM stepstone_checkpoints c
               WHERE c.job_id = j.id AND c.fence = j.fence) AS progressed
FROM stepstone_jobs j INDEXED BY stepstone_jobs_leases
WHERE state = 'running' AND lease_expires_at < :now
ORDER BY lease_expires_at
LIMIT :limit;

-- name: job_requeue_expired
UPDATE stepstone_jobs
SET state = 'queued', replay = 1, run_at = :now, reclaims = :reclaims,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND fence = :fence AND state = 'running' AND lease_expires_at < :now;

-- name: job_fail_poison
UPDATE stepstone_jobs
SET state = 'failed', error = :error, reclaims = :reclaims, lease_owner = NULL,
    lease_expires_at = NULL, updated_at = :now, finished_at = :now
WHERE id = :id AND fence = :fence AND state = 'running' AND lease_expires_at < :now;

-- name: job_complete
UPDATE stepstone_jobs
SET state = 'succeeded', result = :result, lease_owner = NULL, lease_expires_at = NULL,
    updated_at = :now, finished_at = :now
WHERE id = :id AND fence = :fence AND state = 'running';

-- name: job_complete_many
-- Group commit of successes: one statement for every job whose run finished meanwhile.
UPDATE stepstone_jobs
SET state = 'succeeded', result = done.result, lease_owner = NULL, lease_expires_at = NULL,
    updated_at = :now, finished_at = :now
FROM (SELECT i.value AS id, f.value AS fence, r.value AS result
      FROM json_each(:ids) AS i JOIN json_each(:fences) AS f ON f.key = i.key
      JOIN json_each(:results) AS r ON r.key = i.key) AS done
WHERE stepstone_jobs.id = done.id AND stepstone_jobs.fence = done.fence
  AND stepstone_jobs.state = 'running'
RETURNING stepstone_jobs.id;

-- name: job_owners
SELECT id, state, fence FROM stepstone_jobs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: job_ids
SELECT id FROM stepstone_jobs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: job_get_by_keys
SELECT * FROM stepstone_jobs WHERE key IN (SELECT value FROM json_each(:keys));

-- name: job_fail
UPDATE stepstone_jobs
SET state = 'failed', error = :error, lease_owner = NULL, lease_expires_at = NULL,
    updated_at = :now, finished_at = :now
WHERE id = :id AND fence = :fence AND state = 'running';

-- name: job_retry_later
UPDATE stepstone_jobs
SET state = 'queued', error = :error, run_at = :run_at, replay = 0, reclaims = 0,
    lease_owner = NULL,
    lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND fence = :fence AND state = 'running';

-- name: job_release
UPDATE stepstone_jobs
SET state = 'queued', replay = 1, run_at = :now, lease_owner = NULL, lease_expires_at = NULL,
    updated_at = :now
WHERE id = :id AND fence = :fence AND state = 'running';

-- name: job_cancel
-- The job and, recursively, every unfinished job it enqueued (none if it had finished).
WITH RECURSIVE family (id) AS (
    SELECT id FROM stepstone_jobs WHERE id = :id AND state IN ('queued', 'running', 'waiting')
    UNION
    SELECT child.id FROM stepstone_jobs AS child JOIN family ON child.parent_id = family.id)
UPDATE stepstone_jobs
SET state = 'cancelled', lease_owner = NULL, lease_expires_at = NULL, updated_at = :now,
    finished_at = :now
WHERE id IN (SELECT id FROM family) AND state IN ('queued', 'running', 'waiting')
RETURNING id;

-- name: job_requeue
UPDATE stepstone_jobs
SET state = 'queued', run_at = :now, attempts = 0, replay = 0, reclaims = 0,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = :now, finished_at = NULL
WHERE id = :id AND state IN ('failed', 'cancelled');

-- name: job_owner
SELECT state, fence FROM stepstone_jobs WHERE id = :id;

-- name: job_prune_select
SELECT id FROM stepstone_jobs INDEXED BY stepstone_jobs_finished
WHERE finished_at < :before AND state IN ('succeeded', 'failed', 'cancelled')
LIMIT :limit;

-- name: job_delete
DELETE FROM stepstone_jobs WHERE id = :id;

-- name: checkpoint_list
SELECT seq, name, status, value, attempts, created_at, memo
FROM stepstone_checkpoints WHERE job_id = :job_id ORDER BY seq;

-- name: checkpoint_insert
-- Positional (the hot path): ?1 job_id, ?2 seq, ?3 name, ?4 status, ?5 value, ?6 attempts,
-- ?7 fence, ?8 now, ?9 memo.
INSERT INTO stepstone_checkpoints
    (job_id, seq, name, status, value, attempts, fence, created_at, memo)
SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9
WHERE EXISTS (
    SELECT 1 FROM stepstone_jobs WHERE id = ?1 AND fence = ?7 AND state = 'running');

-- name: checkpoint_drop_from_first_error
DELETE FROM stepstone_checkpoints
WHERE job_id = :job_id AND seq >= (
    SELECT min(seq) FROM stepstone_checkpoints WHERE job_id = :job_id AND status = 'error');

-- name: checkpoint_delete_job
DELETE FROM stepstone_checkpoints WHERE job_id = :job_id;

-- name: error_insert
INSERT INTO stepstone_errors (job_id, attempt, seq, step, fence, error, created_at)
SELECT :job_id, :attempt, :seq, :step, :fence, :error, :now
WHERE EXISTS (
    SELECT 1 FROM stepstone_jobs WHERE id = :job_id AND fence = :fence AND state = 'running');

-- name: error_insert_unfenced
INSERT INTO stepstone_errors (job_id, attempt, seq, step, fence, error, created_at)
VALUES (:job_id, :attempt, NULL, NULL, :fence, :error, :now);

-- name: error_list
SELECT attempt, seq, step, error, created_at
FROM stepstone_errors WHERE job_id = :job_id ORDER BY id;

-- name: error_delete_job
DELETE FROM stepstone_errors WHERE job_id = :job_id;

-- name: memo_get
SELECT m.key, m.state, m.step, m.value, m.owner_job, m.owner_fence, m.expires_at,
       m.created_at, m.updated_at,
       coalesce(j.state = 'running' AND j.fence = m.owner_fence
                AND j.lease_expires_at >= :now, 0) AS owner_alive
FROM stepstone_memos m LEFT JOIN stepstone_jobs j ON j.id = m.owner_job
WHERE m.key = :key;

-- name: memo_claim
INSERT INTO stepstone_memos
    (key, state, step, value, owner_job, owner_fence, expires_at, created_at, updated_at)
VALUES (:key, 'computing', :step, NULL, :job_id, :fence, NULL, :now, :now)
ON CONFLICT (key) DO UPDATE
SET state = 'computing', step = excluded.step, value = NULL, owner_job = excluded.owner_job,
    owner_fence = excluded.owner_fence, expires_at = NULL, updated_at = excluded.updated_at;

-- name: memo_store
INSERT INTO stepstone_memos
    (key, state, step, value, owner_job, owner_fence, expires_at, created_at, updated_at)
VALUES (:key, 'done', :step, :value, :job_id, :fence, :expires_at, :now, :now)
ON CONFLICT (key) DO UPDATE
SET state = 'done', step = excluded.step, value = excluded.value,
    owner_job = excluded.owner_job, owner_fence = excluded.owner_fence,
    expires_at = excluded.expires_at, updated_at = excluded.updated_at
WHERE stepstone_memos.state = 'computing' OR stepstone_memos.expires_at <= :now;

-- name: memo_value
SELECT value FROM stepstone_memos WHERE key = :key AND state = 'done';

-- name: memo_release
DELETE FROM stepstone_memos
WHERE key = :key AND state = 'computing' AND owner_job = :job_id AND owner_fence = :fence;

-- name: memo_forget
DELETE FROM stepstone_memos WHERE key = :key;

-- name: memo_forget_prefix
DELETE FROM stepstone_memos WHERE substr(key, 1, length(:prefix)) = :prefix;

-- name: memo_list
SELECT m.key, m.state, m.step, m.value, m.owner_job, m.owner_fence, m.expires_at,
       m.created_at, m.updated_at, 0 AS owner_alive
FROM stepstone_memos m
WHERE substr(m.key, 1, length(:prefix)) = :prefix
ORDER BY m.key
LIMIT :limit;

-- name: memo_prune
DELETE FROM stepstone_memos WHERE expires_at <= :now AND state = 'done';

-- name: job_park
-- Due at once (queued) if the signal or the child's end it waits for already happened.
UPDATE stepstone_jobs
SET state = CASE WHEN ready.ready THEN 'queued' ELSE 'waiting' END,
    run_at = CASE WHEN ready.ready THEN :now ELSE :until END,
    wait_event = :event, replay = 1, reclaims = 0, lease_owner = NULL, lease_expires_at = NULL,
    updated_at = :now
FROM (SELECT
        (:signal_event IS NOT NULL AND EXISTS (
            SELECT 1 FROM stepstone_signals AS s
            WHERE s.event = :signal_event AND s.id > :after
              AND s.created_at >= (SELECT created_at FROM stepstone_jobs WHERE id = :id)))
        OR (:child IS NOT NULL AND EXISTS (
            SELECT 1 FROM stepstone_jobs AS c
            WHERE c.id = :child AND c.state IN ('succeeded', 'failed', 'cancelled')))
        AS ready) AS ready
WHERE stepstone_jobs.id = :id AND stepstone_jobs.fence = :fence
  AND stepstone_jobs.state = 'running';

-- name: signal_insert
INSERT INTO stepstone_signals (event, payload, created_at) VALUES (:event, :payload, :now);

-- name: signal_wake
UPDATE stepstone_jobs
SET state = 'queued', run_at = :now, updated_at = :now
WHERE state = 'waiting' AND wait_event = :event;

-- name: signal_next
SELECT id, payload FROM stepstone_signals
WHERE event = :event AND id > :after AND created_at >= :since
ORDER BY id
LIMIT 1;

-- name: signal_prune
DELETE FROM stepstone_signals WHERE created_at < :before;

-- name: job_debounce
UPDATE stepstone_jobs
SET args = :args, run_at = :run_at, queue = :queue, priority = :priority, updated_at = :now,
    concurrency_key = :concurrency_key, concurrency_limit = :concurrency_limit
WHERE debounce_key = :debounce_key AND state = 'queued'
RETURNING id;

-- name: schedule_next
SELECT next_tick FROM stepstone_schedules WHERE name = :name;

-- name: schedule_insert
INSERT INTO stepstone_schedules (name, next_tick, updated_at) VALUES (:name, :tick, :now)
ON CONFLICT (name) DO NOTHING;

-- name: schedule_update
UPDATE stepstone_schedules SET next_tick = :tick, updated_at = :now
WHERE name = :name AND next_tick = :expected;

-- name: schedule_list
SELECT name, next_tick FROM stepstone_schedules ORDER BY name;

-- name: rate_get
SELECT calls FROM stepstone_rates WHERE key = :key;

-- name: rate_set
INSERT INTO stepstone_rates (key, calls) VALUES (:key, :calls)
ON CONFLICT (key) DO UPDATE SET calls = excluded.calls;
