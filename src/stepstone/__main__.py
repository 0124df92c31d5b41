"""``python -m stepstone`` is the ``stepstone`` command."""

from __future__ import annotations

from ._cli import main

raise SystemExit(main())
