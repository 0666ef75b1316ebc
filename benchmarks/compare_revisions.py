"""Run benchmark scripts against two checkouts of seqzoo, interleaved, and compare their peer ratios.

    git worktree add --detach ../seqzoo-before <commit>
    OMP_NUM_THREADS=2 python benchmarks/compare_revisions.py --before ../seqzoo-before --after . \\
        --rounds 3 bench_foundation.py bench_mamba.py

Each round runs every script once with the *before* checkout's `seqzoo` on the import path, then once with the
*after* one's (the scripts themselves always come from this folder, so both sides time the same workloads). Every
table row whose last cell is a ratio ("1.23x") is collected; the report gives, per row, the median ratio over the
rounds for each side and after / before. The ratios inside one script run already compare seqzoo with a peer timed
interleaved in that process, so a drift of the machine between runs cancels; alternating the two sides round by
round spreads what is left over both.
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


def ratios(output: str) -> dict[str, float]:
    """Map each markdown table row to its last cell's ratio, for rows that end in one. A row is named by its first
    cell, prefixed by its table's last column header when tables reuse row names ("4096 / 256: Mamba"), and followed
    by its next cells while an earlier row had the same name ("generate / raw: gru / 1024 x 2 (12.9M)")."""
    found: dict[str, float] = {}
    header = ""
    for line in output.splitlines():
        if not line.lstrip().startswith("|"):
            header = ""
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not header:
            header = cells[-1]
            continue
        match = RATIO.match(cells[-1])
        if match:
            label = f"{header}: {cells[0]}"
            # A row name met again (one family at two sizes, or at B=1 and B=8, or in a later table of the same
            # last header): add the next cells until the name is new, so that no row overwrites another.
            for extra in cells[1:-1]:
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
        for script in args.scripts:
            for side, checkout in sides.items():
                print(f"round {round_index + 1}/{args.rounds}: {script} with {side} ({checkout})", file=sys.stderr,
                      flush=True)
                for label, value in run(script, checkout, extra).items():
                    seen.setdefault((script, label, side), []).append(value)
    print(f"before: {sides['before']}\nafter: {sides['after']}\nrounds: {args.rounds}; load average at end "
          f"{os.getloadavg()[0]:.2f}\n")
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
