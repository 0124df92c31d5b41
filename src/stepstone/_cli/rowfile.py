"""Reading and checking a backfill's input file (CSV, TSV or JSON Lines): rows become a
job's arguments, converted to its parameters' types, with its key rendered and checked."""

from __future__ import annotations

import csv
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import StepstoneError

if TYPE_CHECKING:
    from .._app import App
    from .._job import JobDefinition

#: Bad rows listed one by one; any more are counted.
SHOWN_BAD_ROWS = 20
#: How many keys one read looks up (``--dry-run``).
LOOKUP_CHUNK = 500
FILE_FORMATS = ("csv", "tsv", "jsonl")
_BOM = b"\xef\xbb\xbf"
_EMPTY = inspect.Parameter.empty
_VAR_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


# reading the file -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Header:
    """A CSV file's header row: the parameter name of each column."""

    line: int
    names: list[str]


@dataclass(frozen=True, slots=True)
class RawRow:
    """One row as read: arguments by position (a JSON array) or by name."""

    line: int
    args: list[Any]
    kwargs: dict[str, Any]
    #: CSV: every value is text, and an empty one stands for the parameter's default.
    text: bool


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that cannot be enqueued, and why."""

    line: int
    reason: str


def detect_format(path: Path, given: str | None) -> str:
    """``given``, else the format the file's extension names, else its first character's."""
    if given:
        return given
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    with path.open("rb") as stream:
        for raw in stream:
            stripped = raw.removeprefix(_BOM).strip()
            if stripped:
                return "jsonl" if stripped[:1] in (b"{", b"[") else "csv"
    return "csv"


def read_rows(path: Path, fmt: str) -> Iterator[Header | RawRow | BadRow]:
    """The rows of a CSV, TSV or JSON Lines file, each with its line number."""
    if fmt == "jsonl":
        return _read_jsonl(path)
    return _read_csv(path, "\t" if fmt == "tsv" else ",")


def _read_jsonl(path: Path) -> Iterator[RawRow | BadRow]:
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, 1):
            line = raw.removeprefix(_BOM) if number == 1 else raw
            if not line.strip():
                continue
            try:
                value = msgspec.json.decode(line)
            except msgspec.DecodeError as exc:
                yield BadRow(number, f"not valid JSON: {exc}")
                continue
            if isinstance(value, dict):
                yield RawRow(number, [], value, text=False)
            elif isinstance(value, list):
                yield RawRow(number, value, {}, text=False)
            else:
                kind = "null" if value is None else type(value).__name__
                yield BadRow(
                    number,
                    f"a JSON {kind}; each line must be a JSON object (arguments by name) or "
                    "a JSON array (arguments by position)",
                )


def _read_csv(path: Path, delimiter: str) -> Iterator[Header | RawRow | BadRow]:
    undecodable: set[int] = set()

    def lines() -> Iterator[str]:
        with path.open("rb") as stream:
            for number, raw in enumerate(stream, 1):
                try:
                    yield (raw.removeprefix(_BOM) if number == 1 else raw).decode()
                except UnicodeDecodeError:
                    undecodable.add(number)
                    yield raw.decode(errors="replace")

    reader = csv.reader(lines(), delimiter=delimiter)
    header: list[str] | None = None
    last = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield BadRow(last + 1, f"not valid CSV: {exc}")
            last = reader.line_num
            continue
        first, last = last + 1, reader.line_num
        if undecodable.intersection(range(first, last + 1)):
            yield BadRow(first, "not valid UTF-8")
            if header is None:
                return
            continue
        if not fields:  # a blank line
            continue
        if header is None:
            header = [name.strip() for name in fields]
            yield Header(first, header)
            continue
        if len(fields) != len(header):
            yield BadRow(first, f"{len(fields)} field(s), but the header has {len(header)}")
            continue
        yield RawRow(first, [], dict(zip(header, fields, strict=True)), text=True)
    if header is None:
        yield BadRow(1, "no header row: a CSV file starts with a row naming the parameters")


# checking one row ---------------------------------------------------------------------------
class RowProblem(Exception):
    """Why a row cannot be enqueued."""


class _Unconvertible(Exception):
    """A type that msgspec cannot build: the value is passed on as it is."""


def _build_extra(type_: Any, value: Any) -> Any:
    """msgspec ``dec_hook``: pydantic models; any other unknown class is left alone."""
    if isinstance(type_, type) and hasattr(type_, "model_validate"):
        return type_.model_validate(value)
    raise _Unconvertible(type_)


def _label(type_: object) -> str:
    return type_.__qualname__ if isinstance(type_, type) else repr(type_).replace("typing.", "")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A row ready for ``enqueue_many``: its item, key and stored arguments."""

    line: int
    item: tuple[Any, ...] | dict[str, Any]
    key: str | None
    args_text: str


class RowChecker:
    """Turns a row into the arguments of one job, checking what the write would check."""

    def __init__(self, job: JobDefinition[Any, Any], key: str | None) -> None:
        from .._keys import KeyTemplate

        self.job = job
        self.signature = job.codec.signature
        self.params = self.signature.parameters
        hints: dict[str, Any] = job.codec.hints
        self.types = {name: hints.get(name, Any) for name in self.params}
        self.var_keyword = next(
            (p.name for p in self.params.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None
        )
        self.by_name = all(
            p.kind not in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL)
            for p in self.params.values()
        )
        self.template = (
            KeyTemplate(key, job.fn, what=f"key of job {job.name}") if key is not None else None
        )

    def header(self, names: list[str]) -> str | None:
        """What is wrong with a CSV header, if anything."""
        named = [
            p.name
            for p in self.params.values()
            if p.kind not in (*_VAR_KINDS, inspect.Parameter.POSITIONAL_ONLY)
        ]
        problems = []
        if "" in names:
            problems.append("a column has no name")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            problems.append(f"repeats column(s) {', '.join(map(repr, repeated))}")
        unknown = [name for name in names if name and name not in named]
        if unknown and self.var_keyword is None:
            problems.append(
                f"names column(s) {', '.join(map(repr, unknown))}, which {self.job.name} has "
                f"no parameter for (its parameters: {', '.join(named) or 'none'})"
            )
        required = [
            p.name for p in self.params.values() if p.default is _EMPTY and p.kind not in _VAR_KINDS
        ]
        missing = [name for name in required if name not in names]
        if missing:
            problems.append(f"has no column for the required parameter(s) {', '.join(missing)}")
        return "the header " + "; ".join(problems) if problems else None

    def check(self, row: RawRow) -> Prepared:
        """The row's item, key and stored arguments; ``RowProblem`` saying what is wrong."""
        kwargs = dict(row.kwargs)
        if row.text:  # an empty cell means the parameter's default
            for name, value in row.kwargs.items():
                param = self.params.get(name)
                if value == "" and param is not None and param.default is not _EMPTY:
                    del kwargs[name]
        try:
            bound = self.signature.bind(*row.args, **kwargs)
        except TypeError as exc:
            raise RowProblem(f"the arguments do not fit {self.job.name}(): {exc}") from exc
        for name, value in list(bound.arguments.items()):
            kind, type_ = self.params[name].kind, self.types[name]
            if kind is inspect.Parameter.VAR_POSITIONAL:
                converted: Any = tuple(self._convert(name, v, type_, row.text) for v in value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                converted = {k: self._convert(k, v, type_, row.text) for k, v in value.items()}
            else:
                converted = self._convert(name, value, type_, row.text)
            bound.arguments[name] = converted
        item: tuple[Any, ...] | dict[str, Any]
        if self.by_name:
            item = {n: v for n, v in bound.arguments.items() if n != self.var_keyword}
            item.update(bound.arguments.get(self.var_keyword or "", {}))
            args: tuple[Any, ...] = ()
            named = item
        elif not bound.kwargs:
            item = args = tuple(bound.args)
            named = {}
        else:
            raise RowProblem(
                f"passes keyword arguments to {self.job.name}(), which also takes positional-only "
                "or *args parameters: enqueue_many takes either positional or keyword arguments"
            )
        try:
            args_text = self.job.codec.encode(args, named)
            key = self.template.render(args, named) if self.template is not None else None
        except (StepstoneError, TypeError) as exc:
            raise RowProblem(str(exc)) from exc
        return Prepared(row.line, item, key, args_text)

    def _convert(self, name: str, value: Any, type_: Any, text: bool) -> Any:
        if type_ is Any or type_ is object or type_ is _EMPTY:
            return value
        try:
            return msgspec.convert(value, type_, strict=False, dec_hook=_build_extra)
        except (_Unconvertible, TypeError):  # a type msgspec cannot build: leave it
            return value
        except msgspec.ValidationError as exc:
            problem = exc
        if text and value == "":  # an empty cell: null, if the type takes it
            try:
                return msgspec.convert(None, type_, strict=False, dec_hook=_build_extra)
            except (_Unconvertible, TypeError, msgspec.ValidationError):
                pass
        raise RowProblem(f"{name}={value!r} is not a valid {_label(type_)}: {problem}")


# the passes -------------------------------------------------------------------------------
@dataclass
class Checked:
    """What the first pass found."""

    rows: int = 0
    new: int = 0
    existing: int = 0
    bad: list[BadRow] = field(default_factory=list)
    bad_count: int = 0

    def add_bad(self, line: int, reason: str) -> None:
        self.bad_count += 1
        if len(self.bad) < SHOWN_BAD_ROWS:
            self.bad.append(BadRow(line, reason))


def check_file(path: Path, fmt: str, checker: RowChecker, lookup: App | None) -> Checked:
    """Check every row; with ``lookup``, also which keys already name a job (dry run)."""
    checked = Checked()
    # hash(key) -> (hash(arguments), line): repeats of a key within the file
    seen: dict[int, tuple[int, int]] = {}
    waiting: list[Prepared] = []  # rows whose key is looked up in the next batch

    def settle() -> None:
        found = {}
        if lookup is not None and waiting:
            keys = [row.key for row in waiting if row.key is not None]
            found = {record.key: record for record in lookup.store.job_get_many(keys=keys)}
        for row in waiting:
            record = found.get(row.key)
            if record is not None and (record.name, record.args) != (
                checker.job.name,
                row.args_text,
            ):
                checked.add_bad(
                    row.line,
                    f"key {row.key!r} is taken by job {record.id} ({record.name}) with "
                    f"arguments {record.args}; this row passes {row.args_text}",
                )
                continue
            checked.rows += 1
            if record is None:
                checked.new += 1
            else:
                checked.existing += 1
        waiting.clear()

    for entry in read_rows(path, fmt):
        if isinstance(entry, Header):
            problem = checker.header(entry.names)
            if problem:
                checked.add_bad(entry.line, problem)
                return checked
            continue
        if isinstance(entry, BadRow):
            checked.add_bad(entry.line, entry.reason)
            continue
        try:
            row = checker.check(entry)
        except RowProblem as exc:
            checked.add_bad(entry.line, str(exc))
            continue
        if row.key is None:
            checked.rows += 1
            checked.new += 1
            continue
        earlier = seen.get(hash(row.key))
        if earlier is not None:
            if earlier[0] != hash(row.args_text):
                checked.add_bad(
                    row.line,
                    f"key {row.key!r} is also the key of row {earlier[1]}, with other "
                    "arguments: a key names one piece of work",
                )
            else:
                checked.rows += 1
                checked.existing += 1
            continue
        seen[hash(row.key)] = (hash(row.args_text), row.line)
        waiting.append(row)
        if len(waiting) >= LOOKUP_CHUNK:
            settle()
    settle()
    return checked


__all__ = [
    "FILE_FORMATS",
    "SHOWN_BAD_ROWS",
    "BadRow",
    "Checked",
    "Header",
    "Prepared",
    "RawRow",
    "RowChecker",
    "RowProblem",
    "check_file",
    "detect_format",
    "read_rows",
]
