"""A small App for the backfill acceptance tests; its database comes from
$STEPSTONE_DATABASE_URL."""

from __future__ import annotations

import stepstone
from stepstone import Retry

app = stepstone.App()


@app.step(key="ocr:{attachment_id}")
def ocr(attachment_id: int) -> str:
    return f"text of {attachment_id}"


@app.job(name="index")
def index(attachment_id: int, channel: str, premium: bool = False, weight: float = 1.0) -> str:
    """Index one attachment: its OCR text is memoised under ``ocr:{attachment_id}``."""
    return f"{channel}:{ocr(attachment_id)}:{premium}:{weight}"


@app.job(name="check", retry=Retry(max_attempts=1))
def check(number: int, fail: bool = False) -> int:
    """Succeed with ``number``, or fail for good when ``fail`` is true."""
    if fail:
        raise ValueError(f"number {number} was asked to fail")
    return number
