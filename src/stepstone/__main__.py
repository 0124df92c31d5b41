"""``python -m stepstone`` is the ``stepstone`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
