"""The ``seqzoo`` command line: ``seqzoo list | kernels | new | generate`` (+ commands that other modules add)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

# Modules that add sub-commands, each with ``register(subparsers)``.
COMMAND_MODULES: list[str] = ["seqzoo.conversions.cli", "seqzoo.hub.cli", "seqzoo.training.cli", "seqzoo.lab.cli"]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["hidden_size=64", "dropout=0.1", "variant=gpt2"]`` -> typed dict (JSON values, else strings)."""
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: override {item!r} is not of the form key=value")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def cmd_list(args: argparse.Namespace) -> int:
    import seqzoo
    from seqzoo.registry import preset_values

    rows = []
    for name in seqzoo.list_models(args.pattern):
        spec, values = preset_values(name)
        config = spec.config_class(**values)
        params = _count_parameters(spec, config) if args.params else None
        rows.append((name, spec.name, config.hidden_size, config.num_hidden_layers, params,
                     config.state_bytes_per_sequence(), config.kv_bytes_per_token()))
    header = ["preset", "architecture", "hidden", "layers"] + (["params"] if args.params else []) + [
        "state bytes/seq", "KV bytes/token"]
    table = [[r[0], r[1], r[2], r[3]] + ([f"{r[4]:,}"] if args.params else []) + [f"{r[5]:,}", f"{r[6]:,}"]
             for r in rows]
    _print_table(header, table)
    return 0


def _count_parameters(spec: Any, config: Any) -> int:
    import torch

    with torch.device("meta"):
        model = spec.default_head(config)
    return sum(p.numel() for p in model.parameters())


def cmd_kernels(args: argparse.Namespace) -> int:
    import seqzoo
    from seqzoo.kernels.registry import KernelError, check_environment

    rows = [[r["op"], r["backend"], r["priority"], "yes" if r["available"] else "no",
             ("forced" if r["forced"] else "yes") if r["selected"] else "", r["description"]]
            for r in seqzoo.list_kernels()]
    _print_table(["op", "backend", "priority", "available", "selected", "notes"], rows)
    try:
        check_environment()  # a misspelt SEQZOO_KERNELS entry would make every kernel call raise
    except KernelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    import torch

    import seqzoo

    torch.manual_seed(args.seed)
    model = seqzoo.create_model(args.preset, **parse_overrides(args.set))
    out = Path(args.directory)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: {out} exists and is not a folder")
    occupied = out.exists() and any(out.iterdir())
    if occupied and not args.force:
        raise SystemExit(f"error: {out} exists and is not empty (pass --force to write into it)")
    from seqzoo.outputs import describe, staged_folder

    try:
        # Built beside `out` and moved into place whole, so a failure never leaves a config.json without weights.
        with staged_folder(out, merge=occupied) as staging:
            save_with_tokenizer(model, staging)
    except OSError as err:
        raise SystemExit(f"error: {describe(err)}") from err
    params = sum(p.numel() for p in model.parameters())
    print(f"saved {args.preset} ({type(model).__name__}, {params:,} parameters) to {out}")
    return 0


def save_with_tokenizer(model: Any, directory: Path) -> None:
    """Save a model with the byte tokenizer and a generation config, ready for AutoTokenizer and pipelines."""
    from seqzoo.tokenizer import VOCAB_SIZE, byte_tokenizer

    if model.config.vocab_size < VOCAB_SIZE:
        raise ValueError(
            f"the byte tokenizer needs vocab_size >= {VOCAB_SIZE}; this model has vocab_size={model.config.vocab_size}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    generation = model.generation_config
    tokenizer = byte_tokenizer()
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, TextStreamer

    import seqzoo  # noqa: F401  (registers the architectures)
    from seqzoo.tokenizer import load_tokenizer
    from seqzoo.kernels import set_backend

    for op, backend in parse_overrides(args.kernel).items():
        set_backend(op, str(backend))
    torch.manual_seed(args.seed)
    source = args.model
    try:
        seq2seq = getattr(AutoConfig.from_pretrained(source), "is_encoder_decoder", False)
        auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
        model = auto.from_pretrained(source, dtype=_dtype(args.dtype)).to(args.device).eval()
        tokenizer = load_tokenizer(source)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: cannot load a model and tokenizer from {source!r}: {err}") from err
    inputs = tokenizer(args.prompt, return_tensors="pt").to(args.device)
    if inputs["input_ids"].shape[1] == 0:
        raise SystemExit("error: the prompt is empty")
    if args.show_attention or args.attention_plot or args.target is not None:
        if not seq2seq:
            raise SystemExit("error: --show-attention, --attention-plot and --target need an encoder-decoder "
                             f"(seq2seq) model; {source!r} holds a {model.config.model_type} language model")
        return _show_attention(model, tokenizer, args)
    sample = args.temperature > 0
    kwargs = dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=sample,
                  pad_token_id=tokenizer.pad_token_id)
    if sample:
        kwargs.update(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    # An encoder-decoder's output is the target alone, which starts with the decoder's start token.
    decode = {"skip_special_tokens": True} if seq2seq else {}
    streamer = (TextStreamer(tokenizer, skip_prompt=False, **decode)
                if args.num_beams == 1 and not args.no_stream else None)
    with torch.no_grad():
        output = model.generate(**inputs, streamer=streamer, **kwargs)
    if streamer is None:
        print(tokenizer.decode(output[0], skip_special_tokens=True))
    return 0


def _show_attention(model: Any, tokenizer: Any, args: argparse.Namespace) -> int:
    """The seeds' exercise: which source positions each target token attends to (printed, and plotted)."""
    from seqzoo.models.seq2seq.inspection import attention_map

    weights = attention_map(model, tokenizer, args.prompt, args.target, max_new_tokens=args.max_new_tokens)
    target = "".join(token for token in weights.target_tokens if token != "<eos>").replace("␣", " ")
    print(f"source: {args.prompt}\ntarget: {target}" + ("" if args.target is not None else " (greedy)") + "\n")
    print(weights.text())
    if args.attention_plot:
        path = weights.plot(args.attention_plot, title=f"{weights.description}: {args.prompt!r} -> {target!r}")
        print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Build a tiny model of every registered architecture and generate from each (untrained: the text is noise;
    the point is that every architecture runs end to end through the same transformers API)."""
    import time

    import torch

    import seqzoo
    from seqzoo.tokenizer import byte_tokenizer

    tokenizer = byte_tokenizer()
    inputs = tokenizer(args.prompt, return_tensors="pt")
    rows = []
    for arch in seqzoo.list_architectures():
        presets = seqzoo.list_models(f"{arch}-*")
        preset = next((p for p in presets if p.endswith("-tiny")), presets[0] if presets else None)
        if preset is None:
            continue
        torch.manual_seed(args.seed)
        model = seqzoo.create_model(preset).eval()
        start = time.perf_counter()
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
        elapsed = time.perf_counter() - start
        new_tokens = output[0] if model.config.is_encoder_decoder else output[0, inputs["input_ids"].shape[1]:]
        text = tokenizer.decode(new_tokens, skip_special_tokens=True)
        params = sum(p.numel() for p in model.parameters())
        rows.append([preset, f"{params:,}", f"{1000 * elapsed / args.max_new_tokens:.1f}", repr(text[:40])])
    _print_table(["preset", "params", "ms/token", "greedy continuation (untrained)"], rows)
    return 0


def _dtype(name: str) -> Any:
    import torch

    allowed = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in allowed:
        raise SystemExit(f"error: unknown --dtype {name!r}; allowed: {', '.join(allowed)}")
    return allowed[name]


def _print_table(header: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)] if rows else [len(h) for h in header]
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqzoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list model presets")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'lstm-*'")
    p.add_argument("--params", action="store_true", help="also count parameters")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("kernels", help="list kernel ops, their backends and the one selected here")
    p.set_defaults(func=cmd_kernels)

    p = sub.add_parser("new", help="create a randomly initialised model from a preset and save it with its tokenizer")
    p.add_argument("preset")
    p.add_argument("directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--force", action="store_true", help="write into a non-empty directory")
    p.set_defaults(func=cmd_new)

    p = sub.add_parser("generate", help="generate text from a saved model (folder or Hub repo id); for a seq2seq "
                       "model the prompt is the source")
    p.add_argument("model")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--kernel", nargs="*", default=[], metavar="OP=BACKEND", help="force kernel backends")
    p.add_argument("--no-stream", action="store_true", help="print once at the end instead of streaming")
    p.add_argument("--show-attention", action="store_true",
                   help="seq2seq models: print which source tokens each generated token attends to")
    p.add_argument("--attention-plot", metavar="PNG", help="seq2seq models: save the attention heat map there")
    p.add_argument("--target", help="seq2seq models: show the attention of this target instead of a generated one")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="build a tiny model of every architecture and generate from each")
    p.add_argument("--prompt", default="How does a network remember? ")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    for module_name in COMMAND_MODULES:
        register: Callable[[Any], None] = getattr(importlib.import_module(module_name), "register")
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # bad user input from the library: print it plainly
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from seqzoo.kernels.registry import KernelError  # imported already if it raised: no cost for other errors

        if not isinstance(err, KernelError):
            raise
        print(f"error: {err}", file=sys.stderr)  # a kernel backend name that does not exist or cannot run here
        return 2


if __name__ == "__main__":
    sys.exit(main())
