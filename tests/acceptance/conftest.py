"""Acceptance tests run the real ``stepstone`` command in subprocesses."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``demo`` marker: ``-m 'not demo'`` skips the end-to-end demo run."""
    config.addinivalue_line(
        "markers", "demo: runs `stepstone demo` end to end (~5 s); part of the default suite"
    )
