"""Rewrites the generated blocks of ``docs/architecture.md`` from the code.

Each block sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` and is
rebuilt from what the code says, so it cannot go stale:

- ``modules`` and ``layers``: every module of ``src/stepstone`` (recursively), its size,
  its docstring and the stepstone modules it imports (read with ``ast``), and the layers
  and import cycles of that graph;
- ``store-operations``, ``store-classes``, ``store-attributes``: the ``Store`` interface
  by introspection, and every class under ``stepstone._store`` that implements it;
- ``record-types`` and ``errors``: ``stepstone.types`` and ``stepstone.errors``;
- ``migrations``, ``tables``, ``postgres-only``: the migration files, the SQLite schema
  they build (applied in order to an in-memory database), and the functions, triggers
  and views of the PostgreSQL migrations.

Nothing names an operation, module or table: only the families operations are grouped in
are written here (by name prefix), so the blocks follow the code as it is redesigned.

    python docs/generate.py           rewrite the blocks in place (``make docs``)
    python docs/generate.py --check   exit 1 with a diff when a block is stale
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import enum
import importlib
import inspect
import pkgutil
import re
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
PACKAGE = "stepstone"
SRC = ROOT / "src" / PACKAGE

_BLOCK = re.compile(
    r"(?P<start><!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)"
    r"(?P<end><!-- end generated -->)",
    re.DOTALL,
)
_MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


class GenerateError(Exception):
    """The document or the code cannot be turned into the generated blocks."""


# text helpers ----------------------------------------------------------------------------
def cell(text: str) -> str:
    """Text made safe for a Markdown table cell (pipes escaped, on one line)."""
    return " ".join(text.split()).replace("|", "\\|")


def code(text: str) -> str:
    """Inline code for a table cell."""
    return f"`{cell(text)}`"


def markdown(text: str) -> str:
    """reStructuredText inline code (double backticks) as Markdown inline code."""
    return text.replace("``", "`")


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    if not doc:
        return ""
    paragraph = inspect.cleandoc(doc).split("\n\n", 1)[0]
    text = " ".join(paragraph.split())
    match = re.search(r"(?<!\be\.g)(?<!\bi\.e)[.!?](?=\s)", text)
    if match:
        text = text[: match.end()]
    return markdown(text)


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    """A Markdown table; cells must already be escaped."""
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def doc_comments(source: str) -> dict[str, dict[str, str]]:
    """The ``#:`` comments above the assignments of a module, by class (``""`` for the
    module itself) and attribute name."""
    lines = source.splitlines()
    found: dict[str, dict[str, str]] = {}

    def comment_above(lineno: int) -> str:
        taken: list[str] = []
        index = lineno - 2
        while index >= 0 and lines[index].strip().startswith("#:"):
            taken.insert(0, lines[index].strip()[2:].strip())
            index -= 1
        return markdown(" ".join(taken))

    def scan(body: list[ast.stmt], owner: str) -> None:
        for node in body:
            target: ast.expr | None = None
            if isinstance(node, ast.AnnAssign):
                target = node.target
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
            if isinstance(target, ast.Name):
                text = comment_above(node.lineno)
                if text:
                    found.setdefault(owner, {})[target.id] = text
            elif isinstance(node, ast.ClassDef):
                scan(node.body, node.name)

    scan(ast.parse(source).body, "")
    return found


def format_annotation(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def format_signature(function: Callable[..., Any], *, skip_first: bool = True) -> str:
    """``(a: int, *, b: str = 'x') -> None``, with the annotations as written."""
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())
    if skip_first and parameters and parameters[0].name in ("self", "cls"):
        parameters = parameters[1:]
    parts: list[str] = []
    star_written = False
    for index, parameter in enumerate(parameters):
        kind = parameter.kind
        if kind is inspect.Parameter.KEYWORD_ONLY and not star_written:
            parts.append("*")
            star_written = True
        text = parameter.name
        if kind is inspect.Parameter.VAR_POSITIONAL:
            text = "*" + text
            star_written = True
        elif kind is inspect.Parameter.VAR_KEYWORD:
            text = "**" + text
        annotated = parameter.annotation is not inspect.Parameter.empty
        if annotated:
            text += ": " + format_annotation(parameter.annotation)
        if parameter.default is not inspect.Parameter.empty:
            text += (" = " if annotated else "=") + repr(parameter.default)
        parts.append(text)
        following = parameters[index + 1] if index + 1 < len(parameters) else None
        if kind is inspect.Parameter.POSITIONAL_ONLY and (
            following is None or following.kind is not inspect.Parameter.POSITIONAL_ONLY
        ):
            parts.append("/")
    text = "(" + ", ".join(parts) + ")"
    if signature.return_annotation is not inspect.Signature.empty:
        text += " -> " + format_annotation(signature.return_annotation)
    return text


# store operations ------------------------------------------------------------------------
#: Families of store operations, by name prefix, in the order the document shows them.
#: An operation goes to the family of the longest prefix it starts with; one matching none
#: gets a family named after its own prefix, and one without a noun (``migrate``) is part
#: of the lifecycle.
FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Enqueue and read jobs", ("job_insert", "job_debounce", "job_get", "job_list")),
    (
        "Claims, leases and rescue",
        ("job_claim", "job_idle", "job_heartbeat", "job_lease", "job_rescue", "job_get_expired"),
    ),
    (
        "Outcomes: the fenced transition out of `running`",
        ("job_transition", "job_complete", "job_fail", "job_retry", "job_release", "job_park"),
    ),
    ("Operator actions on jobs", ("job_",)),
    ("Checkpoints and transactional steps", ("checkpoint_", "step_")),
    ("Memo keys", ("memo_",)),
    ("Attempt errors", ("error_",)),
    ("Signals", ("signal_",)),
    ("Cron schedules", ("schedule_",)),
    ("Rate limits", ("rate_",)),
)
LIFECYCLE = "Opening, closing and wake-ups"


def family_of(name: str) -> str:
    """The family an operation belongs to, by the longest prefix it starts with."""
    matches = [
        (len(prefix), title)
        for title, prefixes in FAMILIES
        for prefix in prefixes
        if name.startswith(prefix)
    ]
    if matches:
        return max(matches)[1]
    if "_" not in name.strip("_") or name in ("change_marker", "on_change"):
        return LIFECYCLE
    return f"`{name.split('_', 1)[0]}_*`"


def store_class() -> type:
    module = importlib.import_module(f"{PACKAGE}._store.base")
    store: type = module.Store
    return store


def _defined_members(cls: type) -> Iterator[tuple[str, Any, type]]:
    """The public members of ``cls`` and its bases (not ``object``'s), with their owner."""
    seen: set[str] = set()
    for owner in cls.__mro__:
        if owner is object or owner.__module__ == "abc":
            continue
        for name, member in vars(owner).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            yield name, member, owner


def _source_line(member: Any) -> int:
    function = member.fget if isinstance(member, property) else member
    function = getattr(function, "__func__", function)
    code_object = getattr(function, "__code__", None)
    return code_object.co_firstlineno if code_object is not None else 0


def store_operations() -> str:
    """Every public operation of ``Store``, by family, with its signature and first sentence."""
    store = store_class()
    families: dict[str, list[tuple[int, str, str, str]]] = {}
    for name, member, _owner in _defined_members(store):
        function = getattr(member, "__func__", member)
        if isinstance(member, property) or not callable(function):
            continue
        abstract = getattr(function, "__isabstractmethod__", False)
        row = (
            code(name + format_signature(function)),
            "abstract" if abstract else "default",
            cell(first_sentence(inspect.getdoc(function))),
        )
        families.setdefault(family_of(name), []).append((_source_line(member), *row))
    order = [title for title, _ in FAMILIES]
    titles = sorted(
        families, key=lambda t: (t != LIFECYCLE, order.index(t) if t in order else 99, t)
    )
    lines: list[str] = []
    total = sum(len(rows) for rows in families.values())
    abstract_count = sum(1 for rows in families.values() for row in rows if row[2] == "abstract")
    lines.append(
        f"`{store.__module__.removeprefix(PACKAGE + '.')}.{store.__name__}` has {total} public "
        f"operations: {abstract_count} abstract (each store writes them), "
        f"{total - abstract_count} with a default written once in the base class."
    )
    for title in titles:
        lines += ["", f"#### {title}", ""]
        rows = [row[1:] for row in sorted(families[title])]
        lines += table(["operation", "kind", "does"], rows)
    return "\n".join(lines)


def store_attributes() -> str:
    """The class attributes every store declares, with their ``#:`` comments."""
    store = store_class()
    rows: list[list[str]] = []
    for owner in reversed(store.__mro__):
        annotations = vars(owner).get("__annotations__", {})
        if not annotations:
            continue
        comments = doc_comments(inspect.getsource(sys.modules[owner.__module__])).get(
            owner.__name__, {}
        )
        for name, annotation in annotations.items():
            default = vars(owner).get(name, dataclasses.MISSING)
            rows.append(
                [
                    code(f"{name}: {format_annotation(annotation)}"),
                    "" if default is dataclasses.MISSING else code(repr(default)),
                    cell(comments.get(name, "")),
                ]
            )
    return "\n".join(table(["attribute", "default", "says"], rows))


def store_classes() -> str:
    """Every store class under ``stepstone._store``: what it writes itself, what it inherits."""
    store = store_class()
    package = importlib.import_module(f"{PACKAGE}._store")
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        try:
            importlib.import_module(info.name)
        except ImportError as exc:
            raise GenerateError(
                f"cannot import {info.name} ({exc}); install the dev and postgres extras "
                "(`make .venv/.installed-dev`) before generating the document"
            ) from exc
    classes: list[type] = []
    pending: list[type] = list(store.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith(f"{package.__name__}.") and cls not in classes:
            classes.append(cls)
    if not classes:
        return "No store class is defined under `stepstone._store`."
    public = {name for name, _, _ in _defined_members(store)}
    rows = []
    for cls in sorted(classes, key=lambda c: (len(c.__mro__), c.__module__, c.__name__)):
        own = [name for name in vars(cls) if callable(getattr(cls, name, None))]
        operations = sorted(name for name in own if name in public)
        inherited = {
            name
            for base in cls.__mro__[1:]
            if base is not object
            for name in vars(base)
            if name.startswith("_") and not name.startswith("__")
        }
        hooks = sorted(name for name in own if name in inherited)
        bases = ", ".join(f"`{base.__name__}`" for base in cls.__bases__)
        path = Path(inspect.getfile(cls)).resolve()
        shown = path.relative_to(SRC.parent) if path.is_relative_to(SRC.parent) else path
        abstract = " (abstract)" if inspect.isabstract(cls) else ""
        rows.append(
            [
                f"`{cls.__name__}`{abstract}",
                code(str(shown)),
                bases,
                str(len(operations)),
                cell(", ".join(f"`{name}`" for name in operations)),
                cell(", ".join(f"`{name}`" for name in hooks)),
            ]
        )
    header = ["class", "module", "based on", "ops", "operations it writes itself"]
    return "\n".join(table([*header, "base-class hooks it overrides"], rows))


# record types ----------------------------------------------------------------------------
def record_types() -> str:
    """The enums, dataclasses and constants of ``stepstone.types``."""
    module = importlib.import_module(f"{PACKAGE}.types")
    source = inspect.getsource(module)
    comments = doc_comments(source)
    classes = [
        value
        for value in vars(module).values()
        if inspect.isclass(value) and value.__module__ == module.__name__
    ]
    classes.sort(key=lambda cls: inspect.getsourcelines(cls)[1])
    lines: list[str] = []
    for cls in classes:
        notes = comments.get(cls.__name__, {})
        summary = first_sentence(cls.__doc__)
        if issubclass(cls, enum.Enum):
            lines += ["", f"**`{cls.__name__}`** (enum): {summary}", ""]
            rows = [
                [code(member.name), code(repr(member.value)), cell(notes.get(member.name, ""))]
                for member in cls
            ]
            lines += table(["member", "value", "means"], rows)
        elif dataclasses.is_dataclass(cls):
            lines += ["", f"**`{cls.__name__}`** (dataclass): {summary}", ""]
            rows = []
            for item in dataclasses.fields(cls):
                default = ""
                if item.default is not dataclasses.MISSING:
                    default = code(repr(item.default))
                elif item.default_factory is not dataclasses.MISSING:
                    default = code(f"{getattr(item.default_factory, '__name__', '?')}()")
                rows.append(
                    [
                        code(item.name),
                        code(format_annotation(item.type)),
                        default,
                        cell(notes.get(item.name, "")),
                    ]
                )
            lines += table(["field", "type", "default", "holds"], rows)
        else:
            lines += ["", f"**`{cls.__name__}`**: {summary}"]
        constructors = [
            code(name + format_signature(getattr(cls, name)))
            for name, member in vars(cls).items()
            if isinstance(member, classmethod) and not name.startswith("_")
        ]
        if constructors:
            lines += ["", "Constructors: " + ", ".join(constructors) + "."]
    constants = []
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name) and target.id.isupper():
                value = getattr(node, "value", None)
                shown = ast.unparse(value) if value is not None else ""
                note = comments.get("", {}).get(target.id, "")
                constants.append([code(target.id), code(shown), cell(note)])
    if constants:
        lines += ["", "**Constants**", ""]
        lines += table(["name", "value", "means"], constants)
    return "\n".join(lines).strip("\n")


def error_tree() -> str:
    """The exceptions of ``stepstone.errors`` as a tree, with their first sentence."""
    module = importlib.import_module(f"{PACKAGE}.errors")
    classes = [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
    ]
    classes.sort(key=lambda cls: inspect.getsourcelines(cls)[1])
    ours = set(classes)
    lines: list[str] = []

    def show(cls: type, depth: int) -> None:
        bases = cls.__bases__ if depth == 0 else cls.__bases__[1:]
        names = ", ".join(f"`{base.__name__}`" for base in bases)
        also = f" ({'from' if depth == 0 else 'also'} {names})" if bases else ""
        summary = first_sentence(cls.__doc__)
        lines.append(f"{'  ' * depth}- `{cls.__name__}`{also}: {summary}")
        for child in classes:
            if cls in child.__bases__ and child.__bases__[0] is cls:
                show(child, depth + 1)

    for cls in classes:
        if cls.__bases__[0] not in ours:
            show(cls, 0)
    return "\n".join(lines)


# tables ----------------------------------------------------------------------------------
@dataclass
class SqlNotes:
    """What the comments of the migration files say about each table, column and object."""

    tables: dict[str, list[str]] = field(default_factory=dict)
    columns: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    objects: dict[str, list[str]] = field(default_factory=dict)
    created_in: dict[str, str] = field(default_factory=dict)


def migration_folder(dialect: str) -> Path:
    """The folder holding the ``NNNN_name.sql`` migrations of a dialect, wherever it is."""
    found = sorted(
        folder
        for folder in SRC.rglob(dialect)
        if folder.is_dir()
        and "migrations" in folder.relative_to(SRC).parts
        and any(_MIGRATION_FILE.match(entry.name) for entry in folder.iterdir())
    )
    if len(found) != 1:
        raise GenerateError(
            f"expected one folder of {dialect} migrations under {SRC.relative_to(ROOT)}, "
            f"found {[str(f.relative_to(ROOT)) for f in found]}"
        )
    return found[0]


def migration_files(dialect: str) -> list[Path]:
    """The migration files of a dialect, in version order."""
    folder = migration_folder(dialect)
    files = [entry for entry in folder.iterdir() if _MIGRATION_FILE.match(entry.name)]
    return sorted(files, key=lambda entry: int(entry.name[:4]))


def leading_comment(sql: str) -> str:
    """The ``--`` comment lines a SQL file starts with, as one line."""
    taken: list[str] = []
    for line in sql.splitlines():
        if not line.strip().startswith("--"):
            break
        taken.append(line.strip()[2:].strip())
    return " ".join(taken)


_NAME = r"(?:\{schema\}\.)?\"?(\w+)\"?"
_CREATE_TABLE = re.compile(rf"CREATE TABLE (?:IF NOT EXISTS )?{_NAME}", re.IGNORECASE)
_ADD_COLUMN = re.compile(
    rf"ALTER TABLE {_NAME}\s+ADD COLUMN (?:IF NOT EXISTS )?(\w+)", re.IGNORECASE
)
_CREATE_OBJECT = re.compile(
    rf"CREATE (?:OR REPLACE )?(?:UNIQUE )?(INDEX|TRIGGER|FUNCTION|VIEW) "
    rf"(?:IF NOT EXISTS )?{_NAME}",
    re.IGNORECASE,
)
_CONSTRAINT_WORDS = {"PRIMARY", "UNIQUE", "CHECK", "FOREIGN", "CONSTRAINT"}


def read_sql_notes(files: Iterable[Path]) -> SqlNotes:
    """The comments right above (or at the end of) each table, column and object definition,
    and the file that first creates each table and object."""
    notes = SqlNotes()
    for path in files:
        pending: list[str] = []
        table_open: str | None = None
        for raw in path.read_text("utf-8").splitlines():
            line, _, trailing = raw.partition("--")
            line = line.strip()
            if not line:
                if trailing.strip():
                    pending.append(trailing.strip())
                elif not raw.strip():
                    pending = []
                continue
            said = [*pending, trailing.strip()] if trailing.strip() else pending
            pending = []
            if table_open is not None:
                if line.startswith(")"):
                    table_open = None
                    continue
                column = line.split()[0].strip('"')
                if said and column.upper() not in _CONSTRAINT_WORDS:
                    notes.columns.setdefault((table_open, column), []).extend(said)
                continue
            if match := _CREATE_TABLE.match(line):
                table_open = match[1]
                notes.created_in.setdefault(match[1], path.name)
                if said:
                    notes.tables.setdefault(match[1], []).extend(said)
            elif match := _ADD_COLUMN.match(line):
                if said:
                    notes.columns.setdefault((match[1], match[2]), []).extend(said)
            elif match := _CREATE_OBJECT.match(line):
                name = match[2]
                notes.created_in.setdefault(name, path.name)
                if said:
                    notes.objects.setdefault(name, []).extend(said)
    return notes


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    not_null: bool
    default: str | None
    primary_key: int


@dataclass(frozen=True)
class Index:
    name: str
    columns: tuple[str, ...]
    unique: bool
    where: str | None
    origin: str


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    indexes: tuple[Index, ...]
    without_rowid: bool


def read_tables(conn: sqlite3.Connection) -> dict[str, Table]:
    """The tables of a SQLite database, in the order they were created."""
    tables: dict[str, Table] = {}
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'table' "
        "AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
    ).fetchall()
    for name, sql in rows:
        columns = tuple(
            Column(column, type_, bool(not_null), default, pk)
            for _, column, type_, not_null, default, pk, _ in conn.execute(
                f'PRAGMA table_xinfo("{name}")'
            )
        )
        indexes = []
        for _, index, unique, origin, _ in conn.execute(f'PRAGMA index_list("{name}")'):
            keyed = tuple(
                column + (" DESC" if desc else "")
                for _, _, column, desc, _, key in conn.execute(f'PRAGMA index_xinfo("{index}")')
                if key
            )
            where = None
            if origin == "c":
                [index_sql] = conn.execute(
                    "SELECT sql FROM sqlite_schema WHERE name = ?", (index,)
                ).fetchone()
                found = re.search(r"\bWHERE\b(.*)$", index_sql, re.IGNORECASE | re.DOTALL)
                where = " ".join(found[1].split()) if found else None
            indexes.append(Index(index, keyed, bool(unique), where, origin))
        indexes.sort(key=lambda index: index.name)
        without_rowid = bool(re.search(r"\)\s*WITHOUT\s+ROWID\s*$", sql, re.IGNORECASE))
        tables[name] = Table(name, columns, tuple(indexes), without_rowid)
    return tables


def sqlite_from_migrations() -> sqlite3.Connection:
    """An in-memory database with every SQLite migration applied, in order."""
    conn = sqlite3.connect(":memory:")
    for path in migration_files("sqlite"):
        conn.executescript(path.read_text("utf-8"))
    return conn


def store_made_tables() -> dict[str, Table]:
    """The tables a SQLite store creates on opening, migrations and its own bookkeeping."""
    store_module = importlib.import_module(f"{PACKAGE}._store")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "schema.db"
        store_module.open_store(f"sqlite:///{path}").close()
        conn = sqlite3.connect(path)
        try:
            return read_tables(conn)
        finally:
            conn.close()


def _key_text(column: Column, table: Table) -> str:
    parts = []
    primary = [c for c in table.columns if c.primary_key]
    if column.primary_key:
        parts.append("primary key" if len(primary) == 1 else f"primary key ({column.primary_key})")
    for index in table.indexes:
        if index.origin == "u" and index.columns == (column.name,):
            parts.append("unique")
    return ", ".join(parts)


def render_table(table_: Table, notes: SqlNotes, origin: str) -> list[str]:
    said = " ".join(notes.tables.get(table_.name, []))
    head = f"##### `{table_.name}`"
    lines = [head, "", f"{origin}{' ' + markdown(said) if said else ''}"]
    if table_.without_rowid:
        lines[-1] += " `WITHOUT ROWID`."
    lines.append("")
    rows = [
        [
            code(column.name),
            code(column.type),
            "yes" if column.not_null else "",
            code(column.default) if column.default is not None else "",
            _key_text(column, table_),
            cell(markdown(" ".join(notes.columns.get((table_.name, column.name), [])))),
        ]
        for column in table_.columns
    ]
    lines += table(["column", "type", "not null", "default", "key", "holds"], rows)
    secondary = [index for index in table_.indexes if index.origin == "c"]
    if secondary:
        lines.append("")
        for index in secondary:
            text = f"- {'unique ' if index.unique else ''}index `{index.name}` on "
            text += "(" + ", ".join(f"`{column}`" for column in index.columns) + ")"
            if index.where:
                text += f" where `{index.where}`"
            said = " ".join(notes.objects.get(index.name, []))
            if said:
                text += f": {markdown(said)}"
            lines.append(text)
    lines.append("")
    return lines


def schema_tables() -> str:
    """Every SQLite table with its columns and indexes, built from the migrations."""
    files = migration_files("sqlite")
    notes = read_sql_notes(files)
    conn = sqlite_from_migrations()
    try:
        from_migrations = read_tables(conn)
        triggers = conn.execute(
            "SELECT name, tbl_name FROM sqlite_schema WHERE type = 'trigger' ORDER BY name"
        ).fetchall()
    finally:
        conn.close()
    lines: list[str] = []
    for table_ in from_migrations.values():
        created = notes.created_in.get(table_.name, "?")
        lines += render_table(table_, notes, f"Created by `{created}`.")
    for table_ in store_made_tables().values():
        if table_.name not in from_migrations:
            lines += render_table(
                table_, notes, "Created by the store itself, before it applies the migrations."
            )
    if triggers:
        lines.append("Triggers:")
        lines.append("")
        for name, on_table in triggers:
            said = " ".join(notes.objects.get(name, []))
            lines.append(f"- `{name}` on `{on_table}`{': ' + markdown(said) if said else ''}")
    return "\n".join(lines).strip("\n")


def migrations() -> str:
    """Each migration file of each dialect with its leading comment."""
    rows = []
    for dialect in ("sqlite", "postgres"):
        for path in migration_files(dialect):
            rows.append(
                [
                    dialect,
                    code(path.name),
                    cell(markdown(leading_comment(path.read_text("utf-8")))),
                ]
            )
    return "\n".join(table(["dialect", "file", "what it does"], rows))


_PG_OBJECT = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?(FUNCTION|TRIGGER|VIEW)\s+(?:\{schema\}\.)?\"?(\w+)\"?",
    re.IGNORECASE,
)
_PG_TRIGGER_DETAIL = re.compile(
    r"\s+(BEFORE|AFTER|INSTEAD\s+OF)\s+(.*?)\s+ON\s+(?:\{schema\}\.)?(\w+).*?"
    r"EXECUTE\s+(?:FUNCTION|PROCEDURE)\s+(?:\{schema\}\.)?(\w+)",
    re.IGNORECASE | re.DOTALL,
)


def postgres_only() -> str:
    """The functions, triggers and views that the PostgreSQL migrations create."""
    files = migration_files("postgres")
    notes = read_sql_notes(files)
    rows: dict[str, list[str]] = {}
    for path in files:
        text = path.read_text("utf-8")
        for match in _PG_OBJECT.finditer(text):
            kind, name = match[1].lower(), match[2]
            if name in rows:
                joiner = ", " if "replaced by" in rows[name][2] else ", replaced by "
                rows[name][2] += joiner + code(path.name)
                continue
            detail = ""
            if kind == "trigger":
                found = _PG_TRIGGER_DETAIL.match(text, match.end())
                if found:
                    when = " ".join(f"{found[1]} {found[2]}".lower().split())
                    detail = f"{when} on `{found[3]}`, runs `{found[4]}()`."
            said = markdown(" ".join(notes.objects.get(name, [])))
            rows[name] = [
                code(name),
                kind,
                code(path.name),
                cell(" ".join(filter(None, [detail, said]))),
            ]
    if not rows:
        return "The PostgreSQL migrations create no functions, triggers or views."
    return "\n".join(table(["object", "kind", "created by", "what it does"], rows.values()))


# modules and layers ----------------------------------------------------------------------
RUNTIME, LAZY, TYPING = "runtime", "lazy", "typing"
#: A module past this many lines is named in the module table's summary.
LARGE_MODULE_LINES = 500
_STRENGTH = {RUNTIME: 0, LAZY: 1, TYPING: 2}


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool
    lines: int
    summary: str
    #: The package modules it imports, with how: runtime, lazy (in a function), typing.
    imports: Mapping[str, str]


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    """The dotted name of the module at ``path`` in the package at ``root``, and whether it
    is a package (``__init__.py``)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(
    body: Iterable[ast.stmt], how: str
) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """The import statements of ``body`` at any depth, with how each is made."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, how
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.body, TYPING)
            yield from _import_nodes(node.orelse, how)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _import_nodes(node.body, TYPING if how == TYPING else LAZY)
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from _import_nodes([child], how)
                elif isinstance(child, ast.ExceptHandler | ast.match_case):
                    yield from _import_nodes(child.body, how)


def find_imports(source: str, name: str, is_package: bool, known: Iterable[str]) -> dict[str, str]:
    """The modules of ``known`` that the module ``name`` imports, each with the strongest
    way it does (runtime at import time, lazy inside a function, typing only)."""
    modules = set(known)
    package = name if is_package else name.rpartition(".")[0]
    found: dict[str, str] = {}

    def add(target: str, how: str) -> None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if not target or target == name:
            return
        if target not in found or _STRENGTH[how] < _STRENGTH[found[target]]:
            found[target] = how

    for node, how in _import_nodes(ast.parse(source).body, RUNTIME):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, how)
            continue
        if node.level:
            base_parts = package.split(".")
            if node.level > 1:
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join(base_parts)
            target = f"{base}.{node.module}" if node.module else base
        else:
            target = node.module or ""
        for alias in node.names:
            submodule = f"{target}.{alias.name}"
            add(submodule if submodule in modules else target, how)
    return found


def read_modules(root: Path = SRC) -> dict[str, Module]:
    """Every module of the package at ``root``, recursively, by dotted name."""
    paths = sorted(root.rglob("*.py"))
    names = {path: module_name(path, root) for path in paths}
    known = [name for name, _ in names.values()]
    modules: dict[str, Module] = {}
    for path in paths:
        name, is_package = names[path]
        source = path.read_text("utf-8")
        tree = ast.parse(source)
        modules[name] = Module(
            name,
            path,
            is_package,
            len(source.splitlines()),
            first_sentence(ast.get_docstring(tree)),
            find_imports(source, name, is_package, known),
        )
    return modules


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of a graph (Tarjan), each sorted, dependencies
    before the modules that need them."""
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index_of[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index_of:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index_of[target])
        if low[node] == index_of[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for node in sorted(graph):
            if node not in index_of:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return components


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The import cycles of a graph: its components of more than one module, or of one
    module importing itself."""
    return [
        component
        for component in strongly_connected(graph)
        if len(component) > 1 or component[0] in set(graph.get(component[0], ()))
    ]


def layers(graph: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Each module's layer: 0 when it imports no module of the graph, else one more than
    the highest layer it imports. The modules of one cycle share a layer."""
    layer: dict[str, int] = {}
    for component in strongly_connected(graph):
        members = set(component)
        below = [
            layer[target]
            for member in component
            for target in graph.get(member, ())
            if target not in members
        ]
        for member in component:
            layer[member] = 1 + max(below) if below else 0
    return layer


def _short(name: str) -> str:
    return name.removeprefix(PACKAGE + ".") if name != PACKAGE else PACKAGE


def module_table() -> str:
    """Every module: path, size, what it holds, which package modules it imports."""
    modules = read_modules()
    rows = []
    for module in modules.values():
        imports = []
        for target, how in sorted(module.imports.items()):
            text = f"`{_short(target)}`"
            if how != RUNTIME:
                text += f" ({how})"
            imports.append(text)
        rows.append(
            [
                code(str(module.path.relative_to(SRC.parent))),
                str(module.lines),
                cell(module.summary),
                ", ".join(imports),
            ]
        )
    total = sum(module.lines for module in modules.values())
    largest = max(modules.values(), key=lambda module: module.lines)
    large = sorted(
        (module for module in modules.values() if module.lines > LARGE_MODULE_LINES),
        key=lambda module: -module.lines,
    )
    sizes = ", ".join(
        f"`{module.path.relative_to(SRC.parent)}` ({module.lines})" for module in large
    )
    lines = [
        f"{len(modules)} modules, {total} lines; the largest is "
        f"`{largest.path.relative_to(SRC.parent)}` ({largest.lines} lines). "
        + (
            f"Over {LARGE_MODULE_LINES} lines: {sizes}."
            if large
            else f"None is over {LARGE_MODULE_LINES} lines."
        ),
        "",
        *table(["module", "lines", "holds", "imports"], rows),
    ]
    return "\n".join(lines)


def layer_list() -> str:
    """The modules by layer, and every import cycle, from the import graph."""
    modules = read_modules()
    every = {name: set(module.imports) for name, module in modules.items()}
    at_import = {
        name: {target for target, how in module.imports.items() if how == RUNTIME}
        for name, module in modules.items()
    }
    layer = layers(every)
    lines = []
    for level in range(max(layer.values()) + 1):
        members = sorted(_short(name) for name, at in layer.items() if at == level)
        lines.append(f"- layer {level}: " + ", ".join(f"`{member}`" for member in members))
    lines.append("")
    found = cycles(every)
    if not found:
        lines.append("No import cycle, counting every import (lazy and typing-only ones too).")
    else:
        lines.append(
            f"{len(found)} import {'cycle' if len(found) == 1 else 'cycles'}, counting every "
            "import (lazy and typing-only ones too); the modules of a cycle share a layer:"
        )
        lines.append("")
        for component in found:
            lines.append(
                f"- {len(component)} modules: " + ", ".join(f"`{_short(m)}`" for m in component)
            )
    runtime = cycles(at_import)
    lines.append("")
    if not runtime:
        lines.append("No cycle among the imports made when a module is first imported.")
    else:
        lines.append("Among the imports made when a module is first imported:")
        lines.append("")
        for component in runtime:
            lines.append(
                f"- {len(component)} modules: " + ", ".join(f"`{_short(m)}`" for m in component)
            )
    return "\n".join(lines)


# the document ----------------------------------------------------------------------------
GENERATORS: dict[str, Callable[[], str]] = {
    "modules": module_table,
    "layers": layer_list,
    "store-operations": store_operations,
    "store-attributes": store_attributes,
    "store-classes": store_classes,
    "record-types": record_types,
    "errors": error_tree,
    "migrations": migrations,
    "tables": schema_tables,
    "postgres-only": postgres_only,
}


def render(text: str) -> str:
    """``text`` with every generated block rebuilt from the code."""
    if str(SRC.parent) not in sys.path:
        sys.path.insert(0, str(SRC.parent))
    seen: list[str] = []
    built: dict[str, str] = {}

    def rebuild(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in GENERATORS:
            raise GenerateError(
                f"unknown generated block {name!r}; the known ones are {sorted(GENERATORS)}"
            )
        seen.append(name)
        if name not in built:
            built[name] = GENERATORS[name]().rstrip("\n")
        return f"{match['start']}{built[name]}\n{match['end']}"

    result = _BLOCK.sub(rebuild, text)
    missing = sorted(set(GENERATORS) - set(seen))
    if missing:
        raise GenerateError(
            f"the document lacks the generated blocks {missing}: add "
            "`<!-- generated: NAME -->` and `<!-- end generated -->` lines for each"
        )
    return result


def stale_diff(path: Path = DOC) -> str:
    """The diff that regenerating ``path`` would make; empty when it is up to date."""
    current = path.read_text("utf-8")
    wanted = render(current)
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    return "".join(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            wanted.splitlines(keepends=True),
            fromfile=f"{name} (as written)",
            tofile=f"{name} (from the code)",
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 with a diff if a block is stale"
    )
    parser.add_argument("--doc", type=Path, default=DOC, help="the document to rewrite")
    args = parser.parse_args(argv)
    try:
        if args.check:
            diff = stale_diff(args.doc)
            if diff:
                sys.stdout.write(diff)
                sys.stderr.write(f"{args.doc.name} is stale: run `make docs`\n")
                return 1
            return 0
        text = args.doc.read_text("utf-8")
        wanted = render(text)
        if wanted != text:
            args.doc.write_text(wanted, "utf-8")
            sys.stderr.write(f"{args.doc.name}: generated blocks rewritten\n")
    except GenerateError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
