"""Int8 dynamic quantisation (seqzoo.quantize_int8, through torchao) of a trained byte-level LSTM LM: held-out
pydoc perplexity and CPU decode time, float32 against int8, measured in the same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_quantization.py                 # trains lstm-pydoc, shortened
    OMP_NUM_THREADS=1 python benchmarks/bench_quantization.py --model RUN_DIR  # a model seqzoo train wrote

The quantised recurrent cells run in the reference kernel backend (torch's fused kernels take plain float weights),
so the float model is timed on both backends: the fused one it normally uses, and the reference one, which
separates the cost of the backend from the cost of int8 arithmetic.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile

import torch
from transformers import AutoModelForCausalLM

import seqzoo
from seqzoo.training.data import build_data
from seqzoo.training.recipe_loading import load_recipe
from seqzoo.training.trainer import train
from timing import decode_ms_per_token, machine, table


def held_out_perplexity(model, inputs: torch.Tensor, targets: torch.Tensor, batch: int = 8) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(inputs), batch):
            logits = model(inputs[start:start + batch]).logits.float()
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets[start:start + batch].flatten(),
                                                       reduction="sum").item()
            count += targets[start:start + batch].numel()
    return math.exp(total / count)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="a folder seqzoo train wrote (default: train lstm-pydoc, shortened)")
    parser.add_argument("--steps", type=int, default=200, help="training steps when training here")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--decode-steps", type=int, default=64)
    args = parser.parse_args()

    overrides = {"train.max_steps": args.steps, "train.eval_every": 0, "train.save_every": 0}
    recipe = load_recipe("lstm-pydoc", overrides)
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model)
    else:
        with tempfile.TemporaryDirectory() as out:
            model = train(load_recipe("lstm-pydoc", {**overrides, "output_dir": out}), progress=False).model
    model = model.eval()
    inputs, targets = build_data(recipe.data, recipe.train.seed).eval_sets()["validation"]
    quantised = seqzoo.quantize_int8(copy.deepcopy(model))

    ppl_float = held_out_perplexity(model, inputs, targets)
    ppl_int8 = held_out_perplexity(quantised, inputs, targets)

    def decode(m, backend=None):
        def run():
            with seqzoo.use_kernel_backend("lstm", backend):
                return decode_ms_per_token(m, args.context, args.decode_steps)
        return run

    times = {"float32, fused backend": decode(model), "float32, reference backend": decode(model, "reference"),
             "int8 (torchao), reference backend": decode(quantised)}
    samples: dict[str, list[float]] = {name: [] for name in times}
    for repeat in range(6):  # interleaved, the first round a warm-up
        for name, fn in times.items():
            value = fn()
            if repeat:
                samples[name].append(value)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"machine: {machine()}; model: {type(model).__name__}, hidden {model.config.hidden_size}, "
          f"{model.config.num_hidden_layers} layers, {sum(p.numel() for p in model.parameters()):,} parameters; "
          f"{len(inputs)} held-out windows of {inputs.shape[1]} bytes")
    print(table(["model", "held-out perplexity (per byte)"],
                [["float32", f"{ppl_float:.3f}"], ["int8 dynamic", f"{ppl_int8:.3f}"]]))
    print()
    base = medians["float32, fused backend"]
    print(table(["decode (batch 1, after a 64-byte prefill)", "ms / token (median of medians)",
                 "float32 fused / this"],
                [[name, f"{m:.3f}", f"{base / m:.2f}"] for name, m in medians.items()]))


if __name__ == "__main__":
    main()
