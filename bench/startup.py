"""Start-up benchmark: wall time of `skd --help`, `skd info` and `skd query "select 1"` against the raw
floor of the same work (a Python that imports duckdb and runs the query itself), best of N fresh processes
each, in one run. Start-up is a feature: these commands import no model library.

    python bench/startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def best_of(cmd: list[str], repeat: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as d:
        db = str(Path(d) / "c.duckdb")
        # bytecode as a user's install has it (this sandbox sets PYTHONDONTWRITEBYTECODE, so that every run
        # would compile skd's modules again); best_of's first run writes it
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"SKD_DB": db}
        subprocess.run([py, "-m", "skd", "init"], env=env, check=True, stdout=subprocess.DEVNULL)
        raw_query = [py, "-c", f"import duckdb; print(duckdb.connect({db!r}, read_only=True).sql('select 1')"
                               ".fetchall())"]
        rows = [
            ("python (nothing imported)", [py, "-c", "pass"], None),
            ("raw: import duckdb, open, select 1", raw_query, None),
            ("skd --help", [py, "-m", "skd", "--help"], 0.5),
            ("skd info", [py, "-m", "skd", "info"], 0.5),
            ('skd query "select 1"', [py, "-m", "skd", "query", "select 1"], 0.5),
        ]
        times = {name: best_of(cmd, args.repeat, env) for name, cmd, _ in rows}
    floor = times["raw: import duckdb, open, select 1"]
    t = Table(title=f"start-up, best of {args.repeat} fresh processes ({platform.machine()}, {os.cpu_count()} cores)",
              title_justify="left")
    for col in ("command", "seconds", "vs raw duckdb", "goal"):
        t.add_column(col, justify="left" if col == "command" else "right")
    for name, _, goal in rows:
        t.add_row(name, f"{times[name]:.3f}", f"{times[name] / floor:.2f}x", f"< {goal} s" if goal else "")
    Console().print(t)


if __name__ == "__main__":
    main()
