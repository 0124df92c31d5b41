-- The job_records view shows every column a job is inserted with: the concurrency limit
-- and the debounce key join the other columns (appended, so the view is replaced in place).

CREATE OR REPLACE VIEW {schema}.job_records AS
SELECT id, name, queue, key, args::text AS args, state, priority,
       extract(epoch FROM run_at)::float8 AS run_at, attempts, fence, reclaims, lease_owner,
       extract(epoch FROM lease_expires_at)::float8 AS lease_expires_at,
       result::text AS result, error::text AS error,
       extract(epoch FROM created_at)::float8 AS created_at,
       extract(epoch FROM updated_at)::float8 AS updated_at,
       extract(epoch FROM started_at)::float8 AS started_at,
       extract(epoch FROM finished_at)::float8 AS finished_at,
       parent_id, wait_event, concurrency_key, concurrency_limit, debounce_key
FROM {schema}.jobs;
