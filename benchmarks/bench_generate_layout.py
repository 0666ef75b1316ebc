"""``model.generate()`` with every weight matrix by rows against by columns (``set_weight_layout``), what
``seqzoo generate --weight-layout auto`` chooses between for one sequence on the CPU: ms per new token of each
family's -small preset (random weights), the two layouts interleaved, at torch's default thread count (as the CLI
runs), and whether both give the same tokens.

    python benchmarks/bench_generate_layout.py [FAMILY ...]    # default: every causal family's -small preset
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

import seqzoo

FAMILIES = ["gru", "lstm", "rnn", "transformer", "mamba", "mamba2", "rwkv7"]
NEW_TOKENS, REPEATS = 48, 7


def main(families: list[str]) -> None:
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {NEW_TOKENS} new tokens after 16, "
          f"median of {REPEATS} interleaved\n")
    print("| preset | rows ms/token | columns ms/token | rows / columns | same tokens |\n|---|---|---|---|---|")
    for family in families:
        torch.manual_seed(0)
        rows = seqzoo.create_model(f"{family}-small").eval()
        columns = copy.deepcopy(rows).set_weight_layout("columns")
        prompt = torch.randint(0, 250, (1, 16))
        kwargs = dict(max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=rows.config.pad_token_id,
                      eos_token_id=None)
        same = torch.equal(rows.generate(prompt, **kwargs), columns.generate(prompt, **kwargs))
        times: dict[str, list[float]] = {"rows": [], "columns": []}
        for _ in range(REPEATS):
            for name, model in (("rows", rows), ("columns", columns)):
                start = time.perf_counter()
                model.generate(prompt, **kwargs)
                times[name].append(time.perf_counter() - start)
        r, c = (statistics.median(times[name]) / NEW_TOKENS * 1e3 for name in ("rows", "columns"))
        print(f"| {family}-small | {r:.2f} | {c:.2f} | {r / c:.2f}x | {same} |", flush=True)


def parse_families(argv: list[str]) -> list[str]:
    """The families named on the command line (default: every one); an unknown name, or an option, is refused by
    argparse with the allowed names, rather than turned into a preset name such as '--help-small'."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("families", nargs="*", metavar="FAMILY",
                        help=f"causal families whose -small preset to time (default: all: {' '.join(FAMILIES)})")
    families = parser.parse_args(argv).families  # (choices= with nargs="*" refuses the empty default on 3.11)
    unknown = [name for name in families if name not in FAMILIES]
    if unknown:
        parser.error(f"invalid FAMILY {', '.join(map(repr, unknown))} (choose from {', '.join(FAMILIES)})")
    return families or FAMILIES


if __name__ == "__main__":
    main(parse_families(sys.argv[1:]))
