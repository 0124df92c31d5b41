"""Several processes opening one fresh database at the same moment all succeed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import stepstone

SCRIPT = """
import os, sys, time
from pathlib import Path
go = Path(sys.argv[2])
Path(f"{go}.ready-{sys.argv[3]}").touch()
while not go.exists():
    time.sleep(0.001)
from stepstone import App
app = App(sys.argv[1])
@app.job(name="open.noop")
def noop(n: int) -> int:
    return n
handle = app.enqueue(noop, int(sys.argv[3]), key=f"open:{sys.argv[3]}")
print(handle.id)
"""


def test_processes_opening_a_fresh_database_together_all_succeed(tmp_path: Path) -> None:
    """Schema creation and WAL switching race between processes without an error."""
    src = Path(stepstone.__file__).resolve().parent.parent  # the stepstone under test
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    for round_ in range(2):
        db = tmp_path / f"fresh-{round_}.db"
        go = tmp_path / f"go-{round_}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", SCRIPT, f"sqlite:///{db}", str(go), str(n)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(4)
        ]
        deadline = time.monotonic() + 30
        while not all(Path(f"{go}.ready-{n}").exists() for n in range(4)):
            assert time.monotonic() < deadline, "the processes did not start"
            time.sleep(0.005)
        go.touch()
        outcomes = [proc.communicate(timeout=60) for proc in procs]
        for proc, (out, err) in zip(procs, outcomes, strict=True):
            assert proc.returncode == 0, err
            assert out.strip()
