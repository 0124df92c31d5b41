"""The App a command works on: the one that ``APP`` (``module:attribute`` or
``path/to/file.py:attribute``) names, or an App with no jobs over the database ``--db`` names.

Anything wrong with ``APP`` is a UsageError saying what: no such module or file, an import
that fails (with its traceback), no such attribute, not an App.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .exits import UsageError

if TYPE_CHECKING:
    from .._app import App


def _import(name: str) -> Any:
    """Import a module by dotted name; a missing module or a failing import is a UsageError."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise UsageError(
                f"cannot load APP: no module named {name!r} (looked in the current "
                f"directory {os.getcwd()} and on sys.path)"
            ) from exc
        raise UsageError(
            f"cannot load APP: importing {name!r} failed: {type(exc).__name__}: {exc}",
            traceback.format_exc(),
        ) from exc
    except Exception as exc:
        raise UsageError(
            f"cannot load APP: importing {name!r} failed: {type(exc).__name__}: {exc}",
            traceback.format_exc(),
        ) from exc


def _import_file(path: Path) -> Any:
    """Import ``path/to/file.py``: under the current directory by its dotted name (so job
    names match those of code that imports it), elsewhere with its folder on sys.path."""
    full = path if path.is_absolute() else Path.cwd() / path
    if not full.is_file():
        raise UsageError(f"cannot load APP: no such file {str(path)!r}")
    try:
        relative = full.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        relative = None
    if relative is not None:
        parts = [*relative.parent.parts, relative.stem]
        if all(part.isidentifier() for part in parts):
            dotted = ".".join(parts)
            try:
                return importlib.import_module(dotted)
            except ModuleNotFoundError as exc:
                if not (exc.name and dotted.startswith(exc.name)):
                    raise UsageError(
                        f"cannot load APP: importing {str(path)!r} failed: {exc}",
                        traceback.format_exc(),
                    ) from exc
    sys.path.insert(0, str(full.parent))
    return _import(full.stem)


def load_app(spec: str) -> App:
    """The App that ``module:attribute`` or ``path/to/file.py:attribute`` names.

    The current directory is put on ``sys.path`` first. Anything wrong is a UsageError
    saying what: no such module or file, no such attribute, not an App.
    """
    from .._app import App

    target, _, attribute = spec.rpartition(":")
    if not target or not attribute:
        raise UsageError(
            f"APP must be module:attribute or path/to/file.py:attribute (for example "
            f"myproject.jobs:app), not {spec!r}"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    module = _import_file(Path(target)) if is_file else _import(target)
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            apps = sorted(name for name, value in vars(module).items() if isinstance(value, App))
            hint = f"; Apps it defines: {', '.join(apps)}" if apps else ""
            raise UsageError(
                f"cannot load APP: module {module.__name__!r} has no attribute {attribute!r}{hint}"
            )
        found = getattr(found, part)
    if not isinstance(found, App):
        raise UsageError(
            f"cannot load APP: {spec} is a {type(found).__name__}, not a stepstone.App"
        )
    return found


def open_app(args: argparse.Namespace) -> App:
    """An App with no jobs over the database the command names (``--db``, else the default)."""
    from .._app import App

    return App(args.db)


__all__ = ["load_app", "open_app"]
