"""stepstone side by side with the tools a user would pick instead, measured in one run.

    python bench/compare.py [--quick] [--systems a,b] [--scenarios a,b] [--python PATH]
                            [--url SERVER] [--repeat N] [--throughput-jobs N] [--out DIR]

Every measurement runs in a fresh subprocess, ``python -m bench.systems.<module> <scenario>
--store sqlite|postgres --url SERVER ...`` (see ``bench/systems/common.py``), which prints
one JSON line. This script runs the matrix, prints one table per scenario with stepstone's
ratio to each peer measured in the same run, and writes ``bench/results/<date>.md`` (with
the machine it ran on), ``<date>.json`` (every JSON line), ``<date>.log`` (the
subprocesses' stderr) and PNG plots ``<date>-throughput.png``, ``<date>-latency.png`` and
``<date>-scale.png``. With ``--quick`` (tiny sizes: the smoke test) the names end in
``-quick``. A system whose module is missing or fails is reported in the tables; the run
goes on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

#: system -> (module under bench/systems, stores it runs on)
SYSTEMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "stepstone": ("stepstone_sys", ("sqlite", "postgres")),
    "dbos": ("dbos_sys", ("sqlite", "postgres")),
    "procrastinate": ("procrastinate_sys", ("postgres",)),
    "pgqueuer": ("pgqueuer_sys", ("postgres",)),
    "floors": ("floors", ("sqlite", "postgres")),
}
SCENARIOS = ("overhead", "throughput", "latency", "scale", "memory", "floor")
PACKAGES = (
    "stepstone",
    "dbos",
    "procrastinate",
    "pgqueuer",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "asyncpg",
    "matplotlib",
    "psutil",
)

#: scenario -> [(field, label, True if higher is better)]
FIGURES: dict[str, list[tuple[str, str, bool]]] = {
    "overhead": [
        ("per_step_us", "per step (µs)", False),
        ("zero_step_jobs_per_s", "0-step jobs/s", True),
        ("three_step_jobs_per_s", "3-step jobs/s", True),
    ],
    "throughput": [("jobs_per_s", "jobs/s", True)],
    "latency": [
        ("p50_ms", "p50 (ms)", False),
        ("p95_ms", "p95 (ms)", False),
        ("p99_ms", "p99 (ms)", False),
    ],
    "scale": [("claim_ms", "claim (ms)", False), ("jobs_per_s", "jobs/s", True)],
    "memory": [("peak_rss_mb", "peak RSS (MB)", False)],
}
TITLES = {
    "overhead": "Step overhead: sequential jobs of 0 and of 3 trivial steps, in-process",
    "throughput": "Throughput: N jobs enqueued first, drained by one worker process",
    "latency": "Latency: enqueue-to-start with an idle worker",
    "scale": (
        "Scale: claim latency and no-op throughput (concurrency 16) with finished jobs in the table"
    ),
    "memory": "Memory: worker peak RSS after draining no-op jobs at concurrency 16",
    "floor": "Floors: the raw writes a durable step cannot go below, same disk and server",
}


@dataclass
class Sizes:
    overhead_jobs: int
    throughput_jobs: int
    samples: int
    scale_rows: tuple[int, ...]
    scale_jobs: int
    memory_jobs: int
    floor_writes: int
    timeout: float

    @classmethod
    def pick(cls, quick: bool) -> Sizes:
        if quick:
            return cls(50, 50, 20, (0, 1000), 50, 50, 300, 240)
        return cls(1000, 10_000, 200, (0, 100_000, 1_000_000), 2000, 10_000, 3000, 1200)


@dataclass
class Measurement:
    system: str
    store: str
    scenario: str
    config: dict[str, int]
    extra: list[str]
    lines: list[dict[str, Any]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        config = " ".join(f"{k}={v}" for k, v in self.config.items())
        return f"{self.system} {self.store} {self.scenario} {config}".strip()

    def result(self) -> dict[str, Any]:
        """The median of numeric fields over the repetitions that worked, else an error."""
        good = [line for line in self.lines if "error" not in line and "skipped" not in line]
        if not good:
            return self.lines[-1] if self.lines else {"error": "not run"}
        merged = dict(good[-1])
        for key, value in good[-1].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                values = [line[key] for line in good if isinstance(line.get(key), int | float)]
                if key not in self.config:
                    merged[key] = statistics.median(values)
        merged["runs"] = len(good)
        return merged


def matrix(systems: list[str], scenarios: list[str], sizes: Sizes) -> Iterator[Measurement]:
    """Every (system, store, scenario, configuration), scenario by scenario, so that the
    figures compared in a table were measured close together."""
    for scenario in scenarios:
        configs: list[tuple[dict[str, int], list[str]]]
        if scenario == "overhead":
            configs = [({}, ["--jobs", str(sizes.overhead_jobs)])]
        elif scenario == "throughput":
            configs = [
                (
                    {"steps": steps, "concurrency": conc},
                    [
                        "--jobs",
                        str(sizes.throughput_jobs),
                        "--steps",
                        str(steps),
                        "--concurrency",
                        str(conc),
                    ],
                )
                for steps in (0, 3)
                for conc in (1, 16)
            ]
        elif scenario == "latency":
            configs = [({}, ["--samples", str(sizes.samples)])]
        elif scenario == "scale":
            configs = [
                (
                    {"rows": rows},
                    ["--rows", str(rows), "--jobs", str(sizes.scale_jobs), "--concurrency", "16"],
                )
                for rows in sizes.scale_rows
            ]
        elif scenario == "memory":
            configs = [({}, ["--jobs", str(sizes.memory_jobs), "--concurrency", "16"])]
        else:
            configs = [({}, ["--jobs", str(sizes.floor_writes)])]
        for config, extra in configs:
            for system in systems:
                if (scenario == "floor") != (system == "floors"):
                    continue
                for store in SYSTEMS[system][1]:
                    yield Measurement(system, store, scenario, config, extra)


# running one measurement ---------------------------------------------------------------------
def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO), str(REPO / "src"), *filter(None, env.get("PYTHONPATH", "").split(":"))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def stop(proc: subprocess.Popen[str]) -> None:
    """Stop a measurement and its workers (its own process group): SIGINT first, so that its
    finally blocks drop its scratch database, then SIGKILL."""
    for sig, grace in ((signal.SIGINT, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_one(m: Measurement, python: str, url: str, timeout: float, log: Any) -> dict[str, Any]:
    module = SYSTEMS[m.system][0]
    base = {"system": m.system, "store": m.store, "scenario": m.scenario, **m.config}
    if not (REPO / "bench" / "systems" / f"{module}.py").exists():
        return {**base, "error": f"bench/systems/{module}.py is missing"}
    cmd = [python, "-m", f"bench.systems.{module}", m.scenario, "--store", m.store, "--url", url]
    cmd += m.extra
    log.write(f"\n===== {m.label}: {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,  # its workers too can be stopped as one group
    )
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        return {**base, "error": f"timed out after {timeout:.0f} s"}
    except KeyboardInterrupt:  # its own session does not get the terminal's Ctrl-C
        stop(proc)
        raise
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                found = json.loads(line)
            except json.JSONDecodeError:
                break
            if proc.returncode and "error" not in found:
                found["error"] = f"exit code {proc.returncode}"
            return {**base, **found}
    tail = stdout.strip().splitlines()[-1:] or ["no output"]
    return {**base, "error": f"exit code {proc.returncode}, no JSON line ({tail[0][:120]})"}


def summary(line: dict[str, Any]) -> str:
    if "error" in line:
        return f"ERROR {line['error']}"
    if "skipped" in line:
        return f"skipped: {line['skipped']}"
    skip = {"system", "store", "scenario", "jobs", "concurrency", "steps", "samples", "rows"}
    return ", ".join(f"{k}={fmt(v)}" for k, v in line.items() if k not in skip)


# formatting ----------------------------------------------------------------------------------
def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if value != value:  # NaN
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio_text(ours: Any, theirs: Any, higher_better: bool) -> str:
    numbers = (int, float)
    if not isinstance(ours, numbers) or not isinstance(theirs, numbers) or not ours or not theirs:
        return "—"
    ratio = ours / theirs if higher_better else theirs / ours
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.0f}x"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    out.append("| " + " | ".join("-" * w for w in widths) + " |")
    out.extend(
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    )
    return "\n".join(out)


def config_text(scenario: str, config: dict[str, int]) -> str:
    if scenario == "throughput":
        kind = "no-op" if config["steps"] == 0 else f"{config['steps']}-step"
        return f"{kind}, concurrency {config['concurrency']}"
    if scenario == "scale":
        return f"{config['rows']:,} finished rows"
    return ""


def scenario_table(scenario: str, results: list[Measurement]) -> str:
    figures = FIGURES[scenario]
    ours: dict[tuple[str, str], dict[str, Any]] = {}
    for m in results:
        if m.system == "stepstone":
            ours[(m.store, json.dumps(m.config, sort_keys=True))] = m.result()
    has_config = any(m.config for m in results)
    headers = (["configuration"] if has_config else []) + ["system", "store"]
    for _, label, higher in figures:
        headers += [label, f"stepstone ratio ({'higher' if higher else 'lower'} is better)"]
    rows = []
    for m in results:
        line = m.result()
        row = ([config_text(scenario, m.config)] if has_config else []) + [m.system, m.store]
        if "error" in line or "skipped" in line:
            what = f"ERROR: {line['error']}" if "error" in line else f"skipped: {line['skipped']}"
            row += [what] + [""] * (2 * len(figures) - 1)
            rows.append(row)
            continue
        mine = ours.get((m.store, json.dumps(m.config, sort_keys=True)), {})
        for key, _, higher in figures:
            row.append(fmt(line.get(key)))
            row.append(
                "(reference)"
                if m.system == "stepstone"
                else ratio_text(mine.get(key), line.get(key), higher)
            )
        rows.append(row)
    return table(headers, rows)


def floor_table(results: list[Measurement], everything: list[Measurement]) -> str:
    def stepstone(
        scenario: str, store: str, config: dict[str, int] | None = None
    ) -> dict[str, Any]:
        for m in everything:
            if (m.system, m.scenario, m.store) == ("stepstone", scenario, store) and (
                config is None or m.config == config
            ):
                return m.result()
        return {}

    rows = []
    for m in results:
        line = m.result()
        if "error" in line or "skipped" in line:
            rows.append([f"floors {m.store}", summary(line), "", "", ""])
            continue
        step = stepstone("overhead", m.store).get("per_step_us")
        if m.store == "sqlite":
            floor = line.get("wal_write_us")
            rows.append(
                [
                    "one sqlite3 write transaction, WAL, synchronous=NORMAL "
                    f"(SQLite {line.get('sqlite_version', '?')})",
                    f"{fmt(floor)} µs",
                    "stepstone per step (SQLite)",
                    f"{fmt(step)} µs",
                    ratio_text(step, floor, True),
                ]
            )
            continue
        for mode in ("on", "off"):
            floor = line.get(f"insert_commit_sync_{mode}_us")
            rows.append(
                [
                    f"psycopg INSERT + COMMIT, synchronous_commit {mode}",
                    f"{fmt(floor)} µs",
                    "stepstone per step (PostgreSQL)",
                    f"{fmt(step)} µs",
                    ratio_text(step, floor, True),
                ]
            )
        rows.append(
            ["psycopg SELECT 1 round trip", f"{fmt(line.get('select_1_us'))} µs", "", "", ""]
        )
        tps = line.get("pgbench_tps")
        if tps is None:
            rows.append(
                ["pgbench -N -c 1", f"skipped: {line.get('pgbench_skipped', '?')}", "", "", ""]
            )
            continue
        for steps, conc in ((0, 1), (0, 16), (3, 1), (3, 16)):
            jobs = stepstone("throughput", "postgres", {"steps": steps, "concurrency": conc})
            rows.append(
                [
                    "pgbench -N -c 1 -T 3 (simple-update, one client)"
                    if (steps, conc) == (0, 1)
                    else "",
                    f"{fmt(tps)} tps" if (steps, conc) == (0, 1) else "",
                    f"stepstone {config_text('throughput', {'steps': steps, 'concurrency': conc})}",
                    f"{fmt(jobs.get('jobs_per_s'))} jobs/s",
                    ratio_text(jobs.get("jobs_per_s"), tps, True),
                ]
            )
    headers = ["floor", "figure", "stepstone figure", "", "stepstone ÷ floor"]
    return table(headers, rows)


# the targets -------------------------------------------------------------------------
def targets(everything: list[Measurement]) -> str:
    def get(system: str, scenario: str, store: str, key: str, **config: int) -> Any:
        for m in everything:
            if (m.system, m.scenario, m.store) == (system, scenario, store) and all(
                m.config.get(k) == v for k, v in config.items()
            ):
                value = m.result().get(key)
                return value if isinstance(value, int | float) else None
        return None

    def verdict(ok: bool | None) -> str:
        return "—" if ok is None else ("met" if ok else "**missed**")

    rows = []
    for store, limit in (("sqlite", 50), ("postgres", 400)):
        step = get("stepstone", "overhead", store, "per_step_us")
        rows.append(
            [
                f"per-step overhead on {store} ≤ {limit} µs",
                f"{fmt(step)} µs",
                verdict(None if step is None else step <= limit),
            ]
        )
    for store, factor in (("sqlite", 40), ("postgres", 10)):
        ours = get("stepstone", "overhead", store, "three_step_jobs_per_s")
        theirs = get("dbos", "overhead", store, "three_step_jobs_per_s")
        ratio = ours / theirs if ours and theirs else None
        rows.append(
            [
                f"3-step jobs one after another on {store} ≥ {factor}x DBOS",
                f"{fmt(ours)} vs {fmt(theirs)} jobs/s ({fmt(ratio)}x)",
                verdict(None if ratio is None else ratio >= factor),
            ]
        )
    for conc in (1, 16):
        ours = get("stepstone", "throughput", "postgres", "jobs_per_s", steps=0, concurrency=conc)
        for peer in ("pgqueuer", "procrastinate"):
            theirs = get(peer, "throughput", "postgres", "jobs_per_s", steps=0, concurrency=conc)
            ratio = ours / theirs if ours and theirs else None
            rows.append(
                [
                    f"no-op jobs on PostgreSQL, one worker, concurrency {conc}: ahead of {peer}",
                    f"{fmt(ours)} vs {fmt(theirs)} jobs/s ({fmt(ratio)}x)",
                    verdict(None if ratio is None else ratio > 1),
                ]
            )
    p50 = get("stepstone", "latency", "postgres", "p50_ms")
    rows.append(
        [
            "enqueue-to-start p50 on PostgreSQL ≤ 3 ms",
            f"{fmt(p50)} ms",
            verdict(None if p50 is None else p50 <= 3),
        ]
    )
    for store in ("sqlite", "postgres"):
        claims = [
            (m.config["rows"], m.result().get("claim_ms"))
            for m in everything
            if (m.system, m.scenario, m.store) == ("stepstone", "scale", store)
        ]
        claims = [(rows_, c) for rows_, c in claims if isinstance(c, int | float)]
        if len(claims) >= 2:
            first, last = min(claims)[1], max(claims)[1]
            text = " → ".join(f"{fmt(c)} ms ({r:,})" for r, c in sorted(claims))
            rows.append(
                [
                    f"claim cost flat with history on {store} (largest ≤ 1.5x empty)",
                    text,
                    verdict(last <= 1.5 * first),
                ]
            )
    return table(["target (issue 6)", "measured", ""], rows)


# the machine ---------------------------------------------------------------------------------
PROBE = r"""
import json, platform, sqlite3, sys
from importlib import metadata
found = {"python": platform.python_version(), "executable": sys.executable,
         "sqlite": sqlite3.sqlite_version, "packages": {}}
for name in sys.argv[2:]:
    try:
        found["packages"][name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
try:
    import psycopg
    with psycopg.connect(sys.argv[1], connect_timeout=5) as conn:
        found["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
        found["postgres_settings"] = dict(conn.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name IN "
            "('fsync', 'synchronous_commit', 'shared_buffers', 'max_connections')").fetchall())
except Exception as exc:
    found["postgres"] = f"unavailable ({type(exc).__name__})"
print(json.dumps(found))
"""


def machine(python: str, url: str) -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        ]
        info["cpu"] = names[0] if names else platform.processor()
        meminfo = Path("/proc/meminfo").read_text().split()
        info["memory_gb"] = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        info.setdefault("cpu", platform.processor())
    try:
        done = subprocess.run(
            [python, "-c", PROBE, url, *PACKAGES],
            capture_output=True,
            text=True,
            timeout=60,
            env=subprocess_env(),
            check=True,
        )
        info.update(json.loads(done.stdout.strip().splitlines()[-1]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        info["probe_error"] = str(exc)[:200]
    return info


def machine_text(info: dict[str, Any], before: str, after: str) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in info.get("packages", {}).items()) or "?"
    settings = ", ".join(f"{k}={v}" for k, v in info.get("postgres_settings", {}).items())
    lines = [
        ("CPU", f"{info.get('cpus')} CPUs (`os.cpu_count()`), {info.get('cpu', '?')}"),
        ("memory", f"{info.get('memory_gb', '?')} GB"),
        ("OS", info.get("platform", "?")),
        ("Python", f"{info.get('python', '?')} ({info.get('executable', '?')})"),
        ("SQLite", info.get("sqlite", "?")),
        (
            "PostgreSQL",
            f"{info.get('postgres', '?')}, same machine, TCP loopback"
            + (f"; {settings}" if settings else ""),
        ),
        ("packages", packages),
        ("load average (1, 5, 15 min)", f"before {before}; after {after}"),
    ]
    return table(["", ""], [[k, str(v)] for k, v in lines])


# plots ---------------------------------------------------------------------------------------
def plots(everything: list[Measurement], stem: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["(no plots: matplotlib is not installed in this interpreter)"]

    def value(m: Measurement, key: str) -> float:
        found = m.result().get(key)
        return float(found) if isinstance(found, int | float) else 0.0

    written = []
    series_order: list[str] = []

    def series(m: Measurement) -> str:
        name = f"{m.system} ({m.store})"
        if name not in series_order:
            series_order.append(name)
        return name

    # throughput: one group per configuration, one bar per system and store
    runs = [m for m in everything if m.scenario == "throughput"]
    if runs:
        configs = list(dict.fromkeys(json.dumps(m.config, sort_keys=True) for m in runs))
        names = list(dict.fromkeys(series(m) for m in runs))
        fig, ax = plt.subplots(figsize=(11, 5.5))
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            heights = []
            for config in configs:
                found = [
                    m
                    for m in runs
                    if series(m) == name and json.dumps(m.config, sort_keys=True) == config
                ]
                heights.append(value(found[0], "jobs_per_s") if found else 0.0)
            bars = ax.bar([c + i * width for c in range(len(configs))], heights, width, label=name)
            ax.bar_label(
                bars,
                labels=[fmt(h) if h else "" for h in heights],
                fontsize=7,
                rotation=90,
                padding=2,
            )
        ax.set_xticks([c + width * (len(names) - 1) / 2 for c in range(len(configs))])
        ax.set_xticklabels([config_text("throughput", json.loads(c)) for c in configs])
        ax.set_ylabel("jobs/s (higher is better)")
        ax.set_title("Jobs drained by one worker process")
        ax.legend(fontsize=8)
        ax.margins(y=0.15)
        fig.tight_layout()
        path = stem.with_name(stem.name + "-throughput.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)

    runs = [m for m in everything if m.scenario == "latency" and "p50_ms" in m.result()]
    if runs:
        fig, ax = plt.subplots(figsize=(9, 5))
        width = 0.27
        labels = [series(m) for m in runs]
        for i, key in enumerate(("p50_ms", "p95_ms", "p99_ms")):
            heights = [value(m, key) for m in runs]
            bars = ax.bar([x + i * width for x in range(len(runs))], heights, width, label=key[:3])
            ax.bar_label(bars, labels=[fmt(h) for h in heights], fontsize=7, padding=2)
        ax.set_xticks([x + width for x in range(len(runs))])
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("ms from the enqueue call to the job's start (lower is better)")
        ax.set_title("Enqueue-to-start latency, idle worker")
        ax.legend()
        ax.margins(y=0.15)
        fig.tight_layout()
        path = stem.with_name(stem.name + "-latency.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)

    runs = [m for m in everything if m.scenario == "scale" and "claim_ms" in m.result()]
    if runs:
        fig, ax = plt.subplots(figsize=(8, 5))
        all_rows = sorted({m.config["rows"] for m in runs})
        for name in dict.fromkeys(series(m) for m in runs):
            points = sorted(
                (m.config["rows"], value(m, "claim_ms")) for m in runs if series(m) == name
            )
            ax.plot(
                [all_rows.index(r) for r, _ in points],
                [c for _, c in points],
                marker="o",
                label=name,
            )
        ax.set_xticks(range(len(all_rows)))
        ax.set_xticklabels([f"{r:,}" for r in all_rows])
        ax.set_xlabel("finished jobs in the table")
        ax.set_ylabel("one claim, median (ms)")
        ax.set_title("Claim latency as history grows")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = stem.with_name(stem.name + "-scale.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


# main ----------------------------------------------------------------------------------------
def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the smoke test")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the measurements")
    parser.add_argument("--url", default=os.environ.get("STEPSTONE_BENCH_URL", DEFAULT_URL))
    parser.add_argument("--repeat", type=int, default=1, help="run the matrix N times; medians")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per measurement")
    parser.add_argument(
        "--throughput-jobs",
        type=int,
        default=None,
        help="jobs per throughput drain and memory run (10,000; --quick 50)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS] + [
        s for s in scenarios if s not in SCENARIOS
    ]
    if unknown:
        parser.error(
            f"unknown: {', '.join(unknown)} (systems: {', '.join(SYSTEMS)}; "
            f"scenarios: {', '.join(SCENARIOS)})"
        )
    sizes = Sizes.pick(args.quick)
    if args.throughput_jobs:
        sizes.throughput_jobs = sizes.memory_jobs = args.throughput_jobs
    timeout = args.timeout or sizes.timeout
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (datetime.date.today().isoformat() + ("-quick" if args.quick else ""))

    started = time.monotonic()
    load_before = load()
    info = machine(args.python, args.url)
    measurements = list(matrix(systems, scenarios, sizes))
    total = len(measurements) * args.repeat
    done = 0
    with open(stem.with_suffix(".log"), "w") as log, open(stem.with_suffix(".json"), "w") as raw:
        for repeat in range(args.repeat):
            for m in measurements:
                done += 1
                began = time.monotonic()
                line = run_one(m, args.python, args.url, timeout, log)
                m.lines.append(line)
                m.seconds.append(time.monotonic() - began)
                raw.write(json.dumps({**line, "repeat": repeat}) + "\n")
                raw.flush()
                print(
                    f"[{done}/{total}] {m.label}: {summary(line)} ({m.seconds[-1]:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    elapsed = time.monotonic() - started

    sections = []
    for scenario in scenarios:
        results = [m for m in measurements if m.scenario == scenario]
        if not results:
            continue
        body = (
            floor_table(results, measurements)
            if scenario == "floor"
            else scenario_table(scenario, results)
        )
        sections.append(f"## {TITLES[scenario]}\n\n{body}")
    if "stepstone" in systems:
        caveat = (
            "Smoke sizes: these verdicts say nothing; run without `--quick`.\n\n"
            if args.quick
            else ""
        )
        sections.append(f"## Targets for stepstone (issue 6)\n\n{caveat}{targets(measurements)}")
    report = "\n\n".join(sections)
    print("\n" + report)

    pictures = plots(measurements, stem)
    size_text = (
        f"overhead {sizes.overhead_jobs} jobs of each kind; "
        f"throughput {sizes.throughput_jobs:,} jobs; "
        f"latency {sizes.samples} samples; scale {', '.join(f'{r:,}' for r in sizes.scale_rows)} "
        f"finished rows, {sizes.scale_jobs:,} jobs; memory {sizes.memory_jobs:,} jobs; "
        f"floors {sizes.floor_writes:,} writes"
    )
    command = "python bench/compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = [
        f"# Benchmarks side by side, {datetime.date.today().isoformat()}"
        + (" (quick: smoke sizes)" if args.quick else ""),
        "",
        f"`{command.strip()}`: {len(measurements)} measurements x {args.repeat} "
        f"repetition(s){', medians' if args.repeat > 1 else ''}, {elapsed / 60:.1f} minutes. "
        f"Sizes: {size_text}.",
        "",
        "Every measurement is a fresh subprocess on a fresh database (PostgreSQL: its own "
        "`CREATE DATABASE`; SQLite: a new file). The stepstone ratio is how many times better "
        "stepstone's figure is, measured in the same run on the same store and configuration: "
        "stepstone ÷ peer for jobs/s, peer ÷ stepstone for times and memory; above 1 means "
        "stepstone is ahead. Ratios to the floors are stepstone ÷ floor.",
        "",
        "## The machine",
        "",
        machine_text(info, load_before, load()),
        "",
    ]
    plot_text = "\n".join(f"![{p}]({p})" for p in pictures if p.endswith(".png"))
    notes = [p for p in pictures if not p.endswith(".png")]
    footer = ["", "## Plots", "", plot_text or "\n".join(notes) or "(none)", ""]
    stem.with_suffix(".md").write_text("\n".join(header) + "\n" + report + "\n" + "\n".join(footer))
    print(
        f"\nwrote {stem.with_suffix('.md')}, {stem.with_suffix('.json')}, "
        f"{stem.with_suffix('.log')}",
        file=sys.stderr,
    )
    for picture in pictures:
        print(
            f"wrote {args.out / picture}" if picture.endswith(".png") else picture, file=sys.stderr
        )
    print(f"{total} measurements in {elapsed / 60:.1f} minutes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
