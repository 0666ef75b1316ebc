"""Where a classic model's decode step goes: the Elman RNN's step taken apart, at B=1 on one torch thread.

Times, interleaved (the best of ``--batches`` batches of ``--calls`` calls each, which drops the host's pauses):
one square matrix-vector product of the hidden width (the unit of the step's work); the step's operations alone
(layer 0's input row from a table of projections by token, ``tanh(h @ W_hh.T + b_hh + row)``, the next layers'
``rnn_tanh_cell`` / ``rnn_relu_cell``, the head) with nothing around them; the seqzoo model's decode step called
directly (``model(token, cache=cache)`` in ``fixed_while_decoding()``); and the ``nn.RNN`` step loop of
``bench_decode.py`` with the same weights. What the model's step costs above its operations is seqzoo's Python
around them (BENCHMARKS.md, run AU).

Then what a new cache costs (``--loops``, run AW): ``bench_decode.py``'s 8-step loops each start from a new prefill,
and a new cache's first step checks the input table's values against the weights (``_BuiltTable.same_values``: a
product of the embedding and of ``weight_ih`` with a fixed vector, which streams both from memory). Timed,
interleaved in a shuffled order, the median of ``--loops`` loops each: the model as built; the same model with that
check replaced, in this process only, by ``True`` (what the check costs: not a seqzoo option, and wrong wherever a
weight changed through ``.data`` or a fused optimizer); and the ``nn.RNN`` loop -- each loop's first step, and the
whole loop per token. Since run AX also the model's copy in one ``fixed_while_decoding()`` block held across all its
loops, as a server that holds its model fixed decodes each request: the table's values are checked at the block's
first cache only.

    python benchmarks/bench_rnn_step_parts.py                      # rnn-small: 512 x 2
    python benchmarks/bench_rnn_step_parts.py --hidden-size 1024
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_decode  # noqa: E402  (the benchmark's model and its nn.RNN peer)

from seqzoo.layers import recurrent  # noqa: E402  (the input table's value check, taken out by --loops' variant)
from seqzoo.models.compat import output_cache  # noqa: E402


def best_us(cases: dict[str, Callable[[], object]], calls: int, batches: int) -> dict[str, float]:
    """Each case's best time per call over ``batches`` batches of ``calls`` calls, the cases' batches interleaved."""
    for run in cases.values():
        for _ in range(20):
            run()
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(batches):
        for name, run in cases.items():
            start = time.perf_counter()
            for _ in range(calls):
                run()
            best[name] = min(best[name], (time.perf_counter() - start) / calls * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--batches", type=int, default=25)
    parser.add_argument("--loops", type=int, default=600, help="new-cache loops of each case (0: none)")
    parser.add_argument("--steps", type=int, default=8, help="steps of each new-cache loop")
    args = parser.parse_args()
    if args.hidden_size < 1 or args.calls < 1 or args.batches < 1 or args.loops < 0 or args.steps < 1:
        parser.error("--hidden-size, --calls, --batches and --steps must be at least 1, --loops at least 0")
    torch.set_num_threads(1)
    pair = bench_decode.family_pair("rnn", {"hidden_size": args.hidden_size}, Path("."))
    model, peer = pair.ours, pair.peer
    layers = list(model.model.layers)
    embedding, head = model.model.embed_tokens.weight, model.lm_head
    cell = {"tanh": torch.rnn_tanh_cell, "relu": torch.rnn_relu_cell}[model.config.nonlinearity]
    activation = {"tanh": torch.tanh, "relu": torch.relu}[model.config.nonlinearity]
    first, rest = layers[0], layers[1:]
    token = torch.tensor([[65]])
    prompt = torch.randint(0, 256, (1, 16))
    hidden = args.hidden_size
    with torch.inference_mode(), model.fixed_while_decoding():
        table = F.linear(embedding, first.weight_ih, first.bias_ih)
        states = [torch.zeros(1, hidden) for _ in layers]
        square, vector = torch.randn(hidden, hidden), torch.randn(1, hidden)

        def operations() -> torch.Tensor:
            y = activation(F.linear(states[0], first.weight_hh, first.bias_hh).add_(table.index_select(0, token[:, 0])))
            for layer, state in zip(rest, states[1:]):
                y = cell(y, state, layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh)
            return F.linear(y, head.weight, head.bias)

        # (the operations are the model's: from zero states, the token's logits as the model's first step gives them)
        expected = model(token, use_cache=True).logits[:, -1]
        if not torch.allclose(operations(), expected, rtol=1e-5, atol=1e-5):
            raise SystemExit("the hand-written operations do not give the model's logits: this script is out of date")
        cache = output_cache(model(prompt, use_cache=True, logits_to_keep=1))
        peer_state = peer.prefill(prompt)[1]

        def model_step() -> None:
            nonlocal cache
            cache = output_cache(model(token, cache=cache, use_cache=True))

        def peer_step() -> None:
            nonlocal peer_state
            peer_state = peer.step(token[:, 0], peer_state)[1]

        found = best_us({"product": lambda: F.linear(vector, square), "operations": operations,
                         "model": model_step, "peer": peer_step}, args.calls, args.batches)
    label = f"Elman RNN ({model.config.nonlinearity}) {hidden} x {len(layers)}, vocabulary {embedding.shape[0]}"
    print(f"{label}; torch {torch.__version__}, one thread; best of {args.batches} x {args.calls} calls, in µs")
    print("| part | µs |\n|---|---|")
    print(f"| one {hidden} x {hidden} matrix-vector product | {found['product']:.1f} |")
    print(f"| the step's operations alone ({len(layers) - 1} cell(s), layer 0's product, the head) "
          f"| {found['operations']:.1f} |")
    print(f"| the seqzoo model's step, called directly, model fixed | {found['model']:.1f} |")
    print(f"| the nn.RNN step loop (bench_decode.py's peer) | {found['peer']:.1f} |")
    around = found["model"] - found["operations"]
    print(f"| seqzoo's Python around the operations (model - operations) | {around:.1f} |")
    if args.loops:
        new_cache_loops(pair, args.loops, args.steps)


def new_cache_loops(pair: bench_decode.Pair, loops: int, steps: int) -> None:
    """Median µs of a new cache's first step and of its whole loop per token: the model as built, the model with the
    input table's value check replaced by ``True`` (here only), the ``nn.RNN`` loop; interleaved, shuffled."""
    checked = recurrent._BuiltTable.same_values
    held = copy.deepcopy(pair.ours)  # (its own model: the block holds it alone, the other cases' model stays unheld)
    cases = {"seqzoo, as built": (bench_decode.SeqzooRunner(pair.ours), checked),
             "seqzoo, the table's value check taken out": (bench_decode.SeqzooRunner(pair.ours), lambda *_: True),
             "seqzoo, in one fixed_while_decoding() block held across the loops": (bench_decode.SeqzooRunner(held),
                                                                                   checked),
             "the nn.RNN step loop": (pair.peer, checked)}
    first: dict[str, list[float]] = {name: [] for name in cases}
    whole: dict[str, list[float]] = {name: [] for name in cases}
    prompt, order = torch.randint(0, 256, (1, 16)), random.Random(0)
    try:
        with torch.inference_mode(), held.fixed_while_decoding():
            for index in range(loops + 5):  # (the first five: warm-up)
                for name in order.sample(list(cases), len(cases)):
                    runner, check = cases[name]
                    recurrent._BuiltTable.same_values = check
                    logits, state = runner.prefill(prompt)
                    token = logits.argmax(-1)
                    start = time.perf_counter()
                    logits, state = runner.step(token, state)
                    token = logits.argmax(-1)
                    after_first = time.perf_counter()
                    for _ in range(steps - 1):
                        logits, state = runner.step(token, state)
                        token = logits.argmax(-1)
                    end = time.perf_counter()
                    if index >= 5:
                        first[name].append((after_first - start) * 1e6)
                        whole[name].append((end - start) * 1e6 / steps)
    finally:
        recurrent._BuiltTable.same_values = checked
    print(f"\nA new cache: a 16-token prefill (not timed), then {steps} steps; medians of {loops} loops, in µs")
    print("| case | first step | the loop, per token |\n|---|---|---|")
    for name in cases:
        print(f"| {name} | {statistics.median(first[name]):.1f} | {statistics.median(whole[name]):.1f} |")


if __name__ == "__main__":
    main()
