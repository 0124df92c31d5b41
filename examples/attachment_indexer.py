"""The seed's attachment indexer, written with stepstone.

Each step's result is checkpointed, so when the job is retried (the OCR service was down)
or resumed on another worker (this one was killed), the steps that already finished are
not run again. The OCR text and the index status are also stored under memo keys of the
attachment (the seed's ``attachment.ocrData`` and ``attachment.searchIndexStatus``), so a
backfill that enqueues new jobs for attachments already processed runs neither OCR nor
the indexing again. The search index step passes an idempotency key (derived from its
memo key, so the same for every job and every retry), so the index deduplicates the one
case a checkpoint cannot cover: a worker that died after the service answered, before the
checkpoint was written. ``docs/idempotency.md`` walks through it.

From the repository root:
    python -m examples.attachment_indexer               # enqueue 3 jobs and run them here
    stepstone worker examples.attachment_indexer:app    # a worker for $STEPSTONE_DATABASE_URL
    stepstone backfill examples.attachment_indexer:add_attachment_to_search_index \
        --from attachments.csv --key "index:{attachment_id}"   # columns channel_id,attachment_id
    stepstone demo                                      # 30 jobs, two workers, one killed
"""

from __future__ import annotations

import os
from typing import Any

import stepstone
from examples import fake_services as services
from stepstone import Retry

# The database comes from $STEPSTONE_DATABASE_URL (else ./stepstone.db). The lease is how
# long a dead worker's jobs wait before another worker takes them over; the demo shortens it.
app = stepstone.App(lease=float(os.environ.get("STEPSTONE_DEMO_LEASE", "30")))

FLAKY_SERVICE = Retry(max_attempts=5, initial=0.05, factor=2.0, max_delay=1.0)


@app.step
def find_customer(channel_id: str) -> dict[str, Any]:
    return services.find_customer(channel_id)


# The memo key stores the text for the attachment, for every job: the seed's ocrData.
@app.step(key="ocr:{attachment_id}", retry=FLAKY_SERVICE)
def run_ocr(attachment_id: str) -> str:
    return services.run_ocr(attachment_id)


# The memo key records that the attachment is in the channel's index: searchIndexStatus.
@app.step(key="index:{channel_id}:{attachment_id}", retry=FLAKY_SERVICE)
def update_search_index(channel_id: str, attachment_id: str, text: str) -> str:
    key = stepstone.current().idempotency_key  # the same on every retry, in every job
    return services.update_search_index(channel_id, attachment_id, text, idempotency_key=key)


@app.job(
    name="add_attachment_to_search_index",
    retry=Retry(max_attempts=5, initial=0.2, factor=2.0, max_delay=2.0),
)
def add_attachment_to_search_index(channel_id: str, attachment_id: str) -> None:
    customer = find_customer(channel_id)
    if not customer["premium"]:  # a premium feature
        return
    text = run_ocr(attachment_id)
    update_search_index(channel_id, attachment_id, text)


if __name__ == "__main__":
    services.create()
    handles = [
        app.enqueue(add_attachment_to_search_index, channel, attachment, key=f"index:{attachment}")
        for channel, attachment in [("sales", "a-1"), ("design", "a-2"), ("general", "a-3")]
    ]
    app.run_worker(until_idle=True)
    for handle in handles:
        steps = ", ".join(f"{step.name} ({step.attempts} attempt(s))" for step in handle.steps())
        print(f"{handle.key}: {handle.state}; steps: {steps or 'none'}")
