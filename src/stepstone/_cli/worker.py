"""``stepstone worker APP``: run a worker for the App that ``APP`` names."""

from __future__ import annotations

import argparse

from .._logs import configure_logging
from .exits import EXIT_OK
from .loading import load_app


def cmd_worker(args: argparse.Namespace) -> int:
    """Configure logging, load the App, and run a Worker over it until it stops."""
    from .._worker import Worker

    configure_logging(args.log_level, args.log_format)
    app = load_app(args.app)
    queues = [name.strip() for name in args.queues.split(",") if name.strip()] or None
    try:
        Worker(app, concurrency=args.concurrency, queues=queues, until_idle=args.until_idle).run()
    finally:
        app.close()
    return EXIT_OK


__all__ = ["cmd_worker"]
