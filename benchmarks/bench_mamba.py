"""Mamba benchmark: seqzoo Mamba (chunked kernels) vs transformers' MambaForCausalLM computing the same function,
plus the decode cost per token of Mamba, Mamba-2 and the seqzoo Transformer at short and long contexts.

    OMP_NUM_THREADS=2 python benchmarks/bench_mamba.py

The transformers model is built from the same config and its random weights are copied into seqzoo through the
hf-mamba converter, so both compute the same logits (checked) and generate the same tokens (checked). Prints
markdown tables of median times; ratios are peer time / seqzoo time (> 1 means seqzoo is faster).
"""

from __future__ import annotations

import argparse
import os

import torch
from transformers import MambaConfig as HFMambaConfig
from transformers import MambaForCausalLM as HFMambaForCausalLM

import seqzoo
from seqzoo.conversions.hf_mamba import convert_hf_mamba
from seqzoo.kernels import use_backend
from timing import compare, decode_ms_per_token, machine, table


def paired_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """transformers' Mamba with mamba-small's sizes, and its conversion to seqzoo."""
    preset = seqzoo.get_config("mamba-small")
    torch.manual_seed(0)
    peer = HFMambaForCausalLM(HFMambaConfig(
        vocab_size=preset.vocab_size, hidden_size=preset.hidden_size, num_hidden_layers=preset.num_hidden_layers,
        state_size=preset.state_size, expand=preset.expand, conv_kernel=preset.conv_kernel,
        pad_token_id=preset.pad_token_id, bos_token_id=preset.bos_token_id, eos_token_id=preset.eos_token_id,
    )).eval()
    ours = convert_hf_mamba(peer)
    with torch.no_grad():
        ids = torch.randint(0, 256, (1, 64))
        torch.testing.assert_close(ours(ids).logits, peer(ids).logits, atol=1e-4, rtol=1e-4)
    return ours, peer


def row(label: str, ours: float, peer: float) -> list[object]:
    return [label, f"{ours * 1e3:.1f}", f"{peer * 1e3:.1f}", f"{peer / ours:.2f}x"]


def versus_transformers(repeats: int) -> list[list[object]]:
    ours, peer = paired_models()
    rows = []
    with torch.no_grad():
        for length in (256, 1024, 4096):
            ids = torch.randint(0, 256, (1, length))
            times = compare({"seqzoo": lambda: ours(ids, use_cache=False),
                             "peer": lambda: peer(ids, use_cache=False)},
                            repeats=repeats if length < 4096 else max(3, repeats // 2), warmup=1)
            rows.append(row(f"Mamba forward, B=1 T={length}", times["seqzoo"], times["peer"]))

        prompt = torch.randint(0, 256, (1, 256))
        kwargs = dict(max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=256)
        assert torch.equal(ours.generate(prompt, **kwargs), peer.generate(prompt, **kwargs))
        times = compare({"seqzoo": lambda: ours.generate(prompt, **kwargs),
                         "peer": lambda: peer.generate(prompt, **kwargs)}, repeats=repeats, warmup=1)
        rows.append(row("Mamba 256-token prompt + 64-token greedy generate", times["seqzoo"], times["peer"]))

        ids = torch.randint(0, 256, (1, 1024))

        def reference():
            with use_backend("selective_scan", "reference"), use_backend("causal_conv1d", "reference"):
                return ours(ids, use_cache=False)

        # Interleaved like every other row (the backends forced around each reference call, not around its repeats).
        times = compare({"chunked": lambda: ours(ids, use_cache=False), "reference": reference}, repeats=repeats,
                        warmup=1)
        chunked, reference = times["chunked"], times["reference"]
        rows.append(["seqzoo Mamba forward T=1024: chunked vs reference kernels", f"{chunked * 1e3:.1f}",
                     f"{reference * 1e3:.1f}", f"{reference / chunked:.2f}x"])
    return rows


def decode_and_architecture_rows(repeats: int, steps: int) -> tuple[list[list[object]], list[list[object]]]:
    torch.manual_seed(0)
    models = {name: seqzoo.create_model(preset).eval() for name, preset in
              (("Mamba", "mamba-small"), ("Mamba-2", "mamba2-small"), ("Transformer", "transformer-small"))}
    decode_rows = []
    for name, model in models.items():
        short, long = (decode_ms_per_token(model, context, steps) for context in (256, 4096))
        params = sum(p.numel() for p in model.parameters())
        decode_rows.append([name, f"{params / 1e6:.2f}M", f"{short:.2f}", f"{long:.2f}", f"{long / short:.2f}x"])
    ids = torch.randint(0, 256, (1, 1024))
    with torch.no_grad():
        times = compare({name: (lambda m=model: m(ids, use_cache=False)) for name, model in models.items()},
                        repeats=repeats, warmup=1)
    forward_rows = [[name, f"{times[name] * 1e3:.1f}", f"{times['Transformer'] / times[name]:.2f}x"]
                    for name in models]
    return decode_rows, forward_rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--decode-steps", type=int, default=64)
    args = parser.parse_args()
    # Other processes on a small machine distort timings badly (each parallel op waits for its threads), so
    # the load average is printed with the results.
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.2f}\n")
    print("seqzoo Mamba vs transformers MambaForCausalLM (hidden 256, 4 layers, state 16, vocab 258; same weights)\n")
    print(table(["workload", "seqzoo ms", "peer ms", "peer / seqzoo"], versus_transformers(args.repeats)))
    decode_rows, forward_rows = decode_and_architecture_rows(args.repeats, args.decode_steps)
    print(f"\nDecode cost per token (median of {args.decode_steps} cached steps, B=1) at 256 vs 4096 context\n")
    print(table(["model (preset *-small)", "params", "ms/token @256", "ms/token @4096", "4096 / 256"], decode_rows))
    print("\nForward B=1 T=1024, no cache\n")
    print(table(["model (preset *-small)", "ms", "Transformer / model"], forward_rows))
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
