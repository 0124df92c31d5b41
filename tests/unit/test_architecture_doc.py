"""docs/architecture.md keeps its generated tables equal to what the code says.

The generator, ``docs/generate.py``, is run in-process in check mode; a stale block fails
with the diff and the command that fixes it (``make docs``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def generate() -> ModuleType:
    """The generator script, loaded as a module."""
    path = ROOT / "docs" / "generate.py"
    spec = importlib.util.spec_from_file_location("stepstone_docs_generate", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_architecture_doc_is_up_to_date(generate: ModuleType) -> None:
    """Every generated block of docs/architecture.md equals what the code gives today."""
    diff = generate.stale_diff(ROOT / "docs" / "architecture.md")
    assert not diff, (
        "docs/architecture.md is stale: run `make docs` (or `python docs/generate.py`) "
        "and commit the result.\n" + diff
    )


def test_a_stale_block_is_reported(generate: ModuleType, tmp_path: Path) -> None:
    """A generated block edited by hand makes the check fail with a diff naming the line."""
    doc = tmp_path / "architecture.md"
    text = (ROOT / "docs" / "architecture.md").read_text("utf-8")
    marker = "<!-- generated: store-operations -->\n"
    assert marker in text
    doc.write_text(text.replace(marker, marker + "| `job_teleport()` | abstract | |\n"), "utf-8")
    diff = generate.stale_diff(doc)
    assert "-| `job_teleport()` | abstract | |" in diff
    assert generate.main(["--check", "--doc", str(doc)]) == 1


def test_an_unknown_or_missing_block_is_refused(generate: ModuleType, tmp_path: Path) -> None:
    """A block name the generator does not know, or a known block left out, is an error."""
    with pytest.raises(generate.GenerateError, match="unknown generated block 'nonsense'"):
        generate.render("<!-- generated: nonsense -->\n<!-- end generated -->\n")
    with pytest.raises(generate.GenerateError, match="lacks the generated blocks"):
        generate.render("no blocks at all\n")


def test_every_store_operation_is_listed(generate: ModuleType) -> None:
    """Each public method of Store appears in the operations block, with its signature."""
    from stepstone._store.base import Store

    listed = generate.store_operations()
    public = [
        name for name in dir(Store) if not name.startswith("_") and callable(getattr(Store, name))
    ]
    assert public
    for name in public:
        assert f"`{name}(" in listed, name


def test_imports_are_resolved_with_how_they_are_made(generate: ModuleType) -> None:
    """Relative, absolute, lazy and TYPE_CHECKING imports each resolve to the module meant."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import errors\n"
        "from ..types import JobState\n"
        "import pkg.store.rows\n"
        "if TYPE_CHECKING:\n"
        "    from ..app import App\n"
        "def later():\n"
        "    from .sqlite import SQLiteStore\n"
    )
    known = ["pkg", "pkg.app", "pkg.types", "pkg.store", "pkg.store.errors", "pkg.store.rows"]
    known += ["pkg.store.sqlite", "pkg.store.base"]
    found = generate.find_imports(source, "pkg.store.base", False, known)
    assert found == {
        "pkg.store.errors": "runtime",
        "pkg.types": "runtime",
        "pkg.store.rows": "runtime",
        "pkg.app": "typing",
        "pkg.store.sqlite": "lazy",
    }


def test_layers_and_cycles_come_from_the_graph(generate: ModuleType) -> None:
    """A module sits one layer above the highest it imports; a cycle is reported as one."""
    graph = {"types": set(), "store": {"types"}, "a": {"store", "b"}, "b": {"a"}, "cli": {"a"}}
    assert generate.layers(graph) == {"types": 0, "store": 1, "a": 2, "b": 2, "cli": 3}
    assert generate.cycles(graph) == [["a", "b"]]
    assert generate.cycles({"x": {"y"}, "y": set()}) == []
