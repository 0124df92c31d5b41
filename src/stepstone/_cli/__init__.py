"""The ``stepstone`` command (also ``python -m stepstone``).

``stepstone worker APP`` runs a worker for the App that ``APP`` (``module:attribute`` or
``path/to/file.py:attribute``) names; ``stepstone backfill JOB --from FILE`` enqueues one
job per row of a file. The operator commands (``jobs``, ``show``, ``retry``, ``cancel``,
``enqueue``, ``signal``, ``forget``, ``memos``, ``migrate``, ``prune``) need no user code: they open
the database that ``--db`` names (default: ``$STEPSTONE_DATABASE_URL``, else ``sqlite:///stepstone.db``,
as ``App()`` does). ``stepstone demo`` runs the seed's story end to end.

Exit codes: 0 done (also when an operation had nothing to do, which is said), 1 an error
(an unknown job, a key conflict, a database that cannot be used), 2 a command line that
cannot work (bad arguments, an APP that cannot be loaded). rich is imported only in this
package, by the commands, so ``import stepstone`` stays light.

Its modules: ``parser`` (argument types, the parser, and ``main``, which dispatches),
``loading`` (the App a command works on), ``worker``, ``enqueue`` and ``backfill`` (one
command each; ``rowfile`` reads and checks a backfill's file),
``commands`` (the other operator commands, and ``demo``), ``render`` (what the commands
print) and ``exits`` (exit codes, UsageError).
"""

from __future__ import annotations

from .loading import load_app
from .parser import build_parser, main, parse_duration
from .render import relative_time

__all__ = ["build_parser", "load_app", "main", "parse_duration", "relative_time"]
