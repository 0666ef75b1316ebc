"""Run benchmark scripts against two checkouts of seqzoo, interleaved, and compare their peer ratios.

    git worktree add --detach ../seqzoo-before <commit>
    OMP_NUM_THREADS=2 python benchmarks/compare_revisions.py --before ../seqzoo-before --after . \\
        --rounds 3 bench_foundation.py bench_mamba.py

Each round runs every script once with the *before* checkout's `seqzoo` on the import path and once with the
*after* one's (the scripts themselves always come from this folder, so both sides time the same workloads), before
first in odd rounds and after first in even ones (ABBA), so that neither side always runs second. Every table row
whose last cell is a ratio ("1.23x") is collected, named by the cells before the table's first timed column; the
report gives, per row, the median ratio over the rounds for each side and after / before (above 1: the row's ratio
grew, which is better for a peer / seqzoo row and worse for a generate / raw or 4096 / 256 row). The ratios inside
one script run already compare seqzoo with a peer timed interleaved in that process, so a drift of the machine
between runs cancels; alternating the two sides round by round spreads what is left over both.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RATIO = re.compile(r"^(\d+(?:\.\d+)?)x$")
# A timed column's header: "seqzoo ms/token", "reference (ms)", "by rows µs", "packed ms/step".
TIMED = re.compile(r"(?:^|[\s(/])(?:ms|µs|s)(?:[\s)/]|$)")


def ratios(output: str) -> dict[str, float]:
    """Map each markdown table row to its last cell's ratio, for rows that end in one. A row is named by its table's
    last column header and its key cells, the cells before the first timed column (a header naming ms, µs or s):
    "peer / seqzoo: rwkv7 / 256 / 4 / 300 / rwkv package / B=1". A key cell that is a bare integer is given with its
    column's name. The name therefore does not depend on which other rows a run printed (a row skipped in one run
    must not rename the rows after it). A table without a timed column is keyed by its first cell. Cells after the
    key are added only while the name is still taken, so that no row overwrites another."""
    found: dict[str, float] = {}
    columns: list[str] = []
    for line in output.splitlines():
        if not line.lstrip().startswith("|"):
            columns = []
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not columns:
            columns = cells
            continue
        match = RATIO.match(cells[-1])
        if match:
            keys = next((i for i, name in enumerate(columns) if TIMED.search(name)), 1)
            keys = max(1, min(keys, len(cells) - 1))
            named = [f"{columns[i]}={cell}" if re.fullmatch(r"\d+", cell) and i < len(columns) else cell
                     for i, cell in enumerate(cells[:keys])]
            label = f"{columns[-1]}: " + " / ".join(named)
            for extra in cells[keys:-1]:
                if label not in found:
                    break
                label = f"{label} / {extra}"
            found[label] = float(match.group(1))
    return found


def run(script: str, checkout: Path, extra: list[str]) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(checkout), str(HERE)]))
    result = subprocess.run([sys.executable, str(HERE / script), *extra], env=env, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise SystemExit(f"{script} failed with {checkout}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    found = ratios(result.stdout)
    if not found:
        raise SystemExit(f"{script} printed no ratio rows with {checkout}:\n{result.stdout[-2000:]}")
    return found


def check_checkout(path: Path) -> Path:
    path = path.resolve()
    if not (path / "seqzoo" / "__init__.py").is_file():
        raise SystemExit(f"{path} is not a seqzoo checkout (no seqzoo/__init__.py); give the worktree's root")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scripts", nargs="+", help="benchmark scripts in this folder, e.g. bench_foundation.py")
    parser.add_argument("--before", type=Path, required=True, help="root of the older checkout")
    parser.add_argument("--after", type=Path, default=HERE.parent, help="root of the newer checkout (default: this)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--script-args", default="", help="arguments passed to every script, e.g. '--repeats 5'")
    args = parser.parse_args()
    sides = {"before": check_checkout(args.before), "after": check_checkout(args.after)}
    for script in args.scripts:
        if not (HERE / script).is_file():
            raise SystemExit(f"no benchmark script {script!r} in {HERE}")
    extra = args.script_args.split()
    seen: dict[tuple[str, str, str], list[float]] = {}
    for round_index in range(args.rounds):
        # ABBA: before first in odd rounds, after first in even ones, so that a drift of the machine during the
        # comparison does not always land on the side that runs second.
        order = list(sides.items())[::-1 if round_index % 2 else 1]
        for script in args.scripts:
            for side, checkout in order:
                print(f"round {round_index + 1}/{args.rounds}: {script} with {side} ({checkout})", file=sys.stderr,
                      flush=True)
                for label, value in run(script, checkout, extra).items():
                    seen.setdefault((script, label, side), []).append(value)
    print(f"before: {sides['before']}\nafter: {sides['after']}\nrounds: {args.rounds}; load average at end "
          f"{os.getloadavg()[0]:.2f}\n")
    print("after / before above 1: the row's ratio grew (better for peer / seqzoo rows, worse for generate / raw "
          "and 4096 / 256 rows)\n")
    print("| script | row | before (median ratio) | after (median ratio) | after / before |")
    print("|---|---|---|---|---|")
    rows = list(dict.fromkeys((script, label) for script, label, _ in seen))
    for script, label in rows:
        before = seen.get((script, label, "before"))
        after = seen.get((script, label, "after"))
        if not before or not after:
            print(f"| {script} | {label} | {_median(before)} | {_median(after)} | (row on one side only) |")
            continue
        change = statistics.median(after) / statistics.median(before)
        print(f"| {script} | {label} | {_median(before)} | {_median(after)} | {change:.3f} |")


def _median(values: list[float] | None) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f}x (" + ", ".join(f"{v:.2f}" for v in values) + ")"


if __name__ == "__main__":
    main()
