"""The seqzoo command line: list presets and kernels, create, generate, train, convert, publish, and run the lab.

Every command answers a user mistake with one line that starts with "error:" (exit status 2) and Ctrl-C with one
line (status 130). --debug, or SEQZOO_DEBUG=1, shows the traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from seqzoo.utils import installed_version, parse_overrides, quiet_transformers, seed_value

# Modules that add sub-commands, each with ``register(subparsers)``. Registering must stay light (no torch): the
# parser is built, and --help answered, before torch is imported.
COMMAND_MODULES: list[str] = ["seqzoo.conversions.cli", "seqzoo.hub.cli", "seqzoo.training.cli", "seqzoo.lab.cli"]

DEBUG_ENV = "SEQZOO_DEBUG"
EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 1, 130

# What to do after Ctrl-C, per command; the message is one line either way.
INTERRUPT_HINTS = {
    "train": "run the same command with --resume to continue from the newest checkpoint (one is written every "
             "train.save_every steps)",
    "lab": "the report folder holds no finished report; run `seqzoo lab` again",
}


def cmd_list(args: argparse.Namespace) -> int:
    import seqzoo
    from seqzoo.registry import preset_parameter_count, preset_values

    names = seqzoo.list_models(args.pattern)
    if not names:
        import difflib

        every = seqzoo.list_models()
        close = difflib.get_close_matches(args.pattern, every, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"no preset matches {args.pattern!r}.{hint} Patterns are shell-style ('lstm-*', '*tiny'); "
                         f"presets: {', '.join(every)}")
    rows = []
    for name in names:
        spec, values = preset_values(name)
        config = spec.config_class(**values)
        row = [name, spec.name, config.hidden_size, config.num_hidden_layers]
        if args.params:
            row.append(f"{preset_parameter_count(name):,}")
        rows.append(row + [f"{config.state_bytes_per_sequence():,}", f"{config.kv_bytes_per_token():,}"])
    header = ["preset", "architecture", "hidden", "layers"] + (["params"] if args.params else []) + [
        "state bytes/seq", "KV bytes/token"]
    print_table(header, rows)
    # What each listed architecture can be built for: one head per task (seqzoo.create_model(preset, task)).
    specs = {preset_values(name)[0].name: preset_values(name)[0] for name in names}
    print()
    print_table(["architecture", "heads (tasks)", "bidirectional"],
                [[name, ", ".join(spec.heads), "yes" if spec.config_class.supports_bidirectional else "no"]
                 for name, spec in sorted(specs.items())])
    return 0


def cmd_kernels(args: argparse.Namespace) -> int:
    import seqzoo
    from seqzoo.kernels.registry import KernelError, check_environment

    rows, reasons = [], {}  # reason -> footnote number
    rows_seen = seqzoo.list_kernels()
    try:
        check_environment()  # a misspelt SEQZOO_KERNELS entry makes every kernel call raise: one error line, below
        broken = None
    except KernelError as err:
        broken = err  # (no backend is selected then: the column stays empty)
    for r in rows_seen:
        available = "yes" if r["available"] else "no"
        reason = "" if r["available"] else _unavailable_reason(r["backend"])
        if reason:
            available = f"no [{reasons.setdefault(reason, len(reasons) + 1)}]"
        selected = ("forced" if r["forced"] else "yes") if r["selected"] and broken is None else ""
        rows.append([r["op"], r["backend"], r["priority"], available, selected, r["description"]])
    print_table(["op", "backend", "priority", "available", "selected", "notes"], rows)
    for reason, mark in reasons.items():
        print(f"[{mark}] {reason}")
    if broken is not None:
        raise broken
    for r in rows_seen:
        if r["forced"] and not r["available"]:  # every call of the op would raise: say so, as for a typo
            raise KernelError(f"SEQZOO_KERNELS requests backend {r['backend']!r} for op {r['op']!r}, which is not "
                              f"available here; every {r['op']} call would raise")
    return 0


def _unavailable_reason(backend: str) -> str:
    if not backend.startswith("triton"):
        return ""
    import torch

    from seqzoo.kernels.triton_support import triton_installed

    if not triton_installed():
        return "Triton is not installed (pip install 'seqzoo[triton]'), and the Triton kernels need a CUDA GPU"
    if not torch.cuda.is_available():
        return "the Triton kernels need a CUDA GPU and torch sees none here (CPU runs use the chunked backends)"
    return ""


def cmd_new(args: argparse.Namespace) -> int:
    import torch

    import seqzoo
    from seqzoo.utils import count_parameters

    out = Path(args.directory)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{str(out)!r} is a file, not a folder")
    occupied = out.exists() and any(out.iterdir())
    if occupied and not args.force:
        raise ValueError(f"{str(out)!r} exists and is not empty (pass --force to write into it)")
    from seqzoo.outputs import describe, staged_folder

    torch.manual_seed(args.seed)
    model = seqzoo.create_model(args.preset, **parse_overrides(args.set, "--set"))
    try:
        # Built beside `out` and moved into place whole, so a failure never leaves a config.json without weights.
        with staged_folder(out, merge=occupied) as staging:
            save_with_tokenizer(model, staging)
    except OSError as err:
        raise ValueError(describe(err)) from err
    from seqzoo.hub.cards import TRAINING_FILE

    stale = out / TRAINING_FILE
    note = ""
    if occupied and (stale.is_file() or stale.is_symlink()):
        # The training record of the model this one replaced: the model card would present its dataset, steps and
        # evaluation figures as this untrained model's.
        stale.unlink()
        note = f"; removed the {TRAINING_FILE} of the model it replaced (this one is untrained)"
    print(f"saved {args.preset} ({type(model).__name__}, {count_parameters(model):,} parameters) to {out}{note}")
    return 0


def save_with_tokenizer(model: Any, directory: Path) -> None:
    """Save a model with the byte tokenizer and a generation config, ready for AutoTokenizer and pipelines."""
    from seqzoo.tokenizer import VOCAB_SIZE, tokenizer_for

    if model.config.vocab_size < VOCAB_SIZE:
        raise ValueError(
            f"the byte tokenizer needs vocab_size >= {VOCAB_SIZE}; this model has vocab_size={model.config.vocab_size}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    generation = model.generation_config
    tokenizer = tokenizer_for(model)
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    with quiet_transformers():  # its "Writing model shards" bar for one small file is noise on the console
        model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


# The smallest --temperature sampled with. Below it sampling is greedy in effect (a token 1e-4 behind the likeliest
# gets probability exp(-100) or less), and far below it the scores divided by it overflow to inf, and sampling fails.
MIN_TEMPERATURE = 1e-6
DEFAULT_NEW_TOKENS = 64  # seqzoo generate's --max-new-tokens


def check_generation_args(args: argparse.Namespace) -> None:
    """Refuse values generate() would reject deep inside, or silently ignore."""
    if args.max_new_tokens is not None and getattr(args, "target", None) is not None:
        raise ValueError(f"--max-new-tokens={args.max_new_tokens} has no effect with --target: the target's own "
                         "tokens are read instead of generated; give one of them")
    args.default_new_tokens = args.max_new_tokens is None  # (the default fits itself to the model's positions)
    if args.max_new_tokens is None:
        args.max_new_tokens = DEFAULT_NEW_TOKENS
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens={args.max_new_tokens} is invalid: must be >= 1")
    if args.num_beams < 1:
        raise ValueError(f"--num-beams={args.num_beams} is invalid: must be >= 1 (1 = no beam search)")
    if not 0 <= args.temperature < float("inf"):  # also catches NaN; inf would sample uniformly, ignoring the model
        raise ValueError(f"--temperature={args.temperature} is invalid: must be a finite number >= 0 (0 = greedy)")
    if 0 < args.temperature < MIN_TEMPERATURE:  # the logits divided by it overflow to inf: sampling fails on NaNs
        raise ValueError(f"--temperature={args.temperature} is too small to sample with (the scores divided by it "
                         f"overflow): use 0 for greedy decoding, which it amounts to, or >= {MIN_TEMPERATURE:g}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p={args.top_p} is invalid: must be in (0, 1]")
    if args.top_k is not None and args.top_k < 0:
        raise ValueError(f"--top-k={args.top_k} is invalid: must be >= 0 (0 = no top-k filter)")
    if args.temperature == 0:
        given = [flag for flag, value in (("--top-p", args.top_p), ("--top-k", args.top_k), ("--seed", args.seed))
                 if value is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} when sampling; add "
                             "--temperature T (> 0), e.g. --temperature 0.8")
    if args.temperature > 0 and args.num_beams > 1:
        raise ValueError("--num-beams and --temperature together would be beam sampling, which seqzoo's CLI does "
                         "not offer; use one of them")


def resolve_device(name: str) -> str:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r} is not a device name (cpu, cuda, cuda:1, mps): {err}") from None
    if device.type not in ("cpu", "cuda", "mps", "xpu"):  # (meta holds no data; xla, hpu ... need plugins)
        raise ValueError(f"--device {name}: seqzoo generate runs on cpu, cuda, cuda:N or mps, not on a "
                         f"{device.type} device")
    if device.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise ValueError(f"--device {name}: torch sees no XPU on this machine; use --device cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch sees no CUDA GPU on this machine (torch {torch.__version__}); "
                         f"use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return name


def check_model_source(source: str) -> None:
    """A source that is not a folder here must look like a Hub id (owner/name); else it is a mistyped folder."""
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{source!r} holds no config.json, so it is no saved model (`seqzoo new`, `seqzoo "
                             f"train` and save_pretrained write one)")
        from seqzoo.models.loading import damaged_json_files

        damaged = damaged_json_files(path, ("config.json",))
        if damaged:  # (a file nested past Python's recursion limit failed as an unexpected RecursionError)
            raise ValueError(f"{source!r} holds no model that loads: {damaged}; save or download the model again")
        return
    if path.exists():
        raise ValueError(f"{source!r} is a file; give the folder that holds config.json and the weights")
    parts = source.split("/")
    looks_like_hub_id = (len(parts) == 2 and all(parts) and not source.startswith((".", "~"))
                         and "\\" not in source and not Path(parts[0]).is_dir())
    if not looks_like_hub_id:
        near = ""
        parent = path.parent if str(path.parent) else Path(".")
        if parent.is_dir():
            import difflib

            siblings = [p.name for p in parent.iterdir() if p.is_dir()]
            close = difflib.get_close_matches(path.name, siblings, n=3)
            near = f" Did you mean {', '.join(repr(str(parent / c)) for c in close)}?" if close else ""
        raise ValueError(f"no folder {source!r} here.{near} (A Hub model is named owner/name.)")


def cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        TextStreamer,
    )

    import seqzoo  # noqa: F401  (registers the architectures)
    from seqzoo.kernels import set_backend
    from seqzoo.kernels.registry import selections as kernel_selections
    from seqzoo.tokenizer import load_tokenizer

    check_generation_args(args)
    device = resolve_device(args.device)
    check_model_source(args.model)
    forced = parse_overrides(args.kernel, "--kernel")
    for op, backend in forced.items():
        set_backend(op, str(backend))  # (which clears the registry's cached choices: see _note_unused_kernels)
    chosen_before = {op: kernel_selections(op) for op in forced}
    torch.manual_seed(0 if args.seed is None else args.seed)
    source = args.model
    try:
        with quiet_transformers():
            _check_known_model_type(source)
            # (never transformers' interactive "run the custom code? [y/N]" prompt for a model_type nobody registered)
            config = AutoConfig.from_pretrained(source, trust_remote_code=False)
            seq2seq = getattr(config, "is_encoder_decoder", False)
            auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
            model, loading = auto.from_pretrained(source, dtype=_dtype(args.dtype), output_loading_info=True)
            model = model.to(device).eval()
            tokenizer = load_tokenizer(source)
    except (OSError, ValueError) as err:
        where = "the folder" if Path(source).is_dir() else "the Hub repository"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load a model and tokenizer from {where} {source!r}: {first_line}") from err
    _check_generating_head(config, source)
    _check_nothing_missing(model, loading, source)
    try:
        inputs = tokenizer(args.prompt, return_tensors="pt").to(device)
    except Exception as err:  # tokenizers raises a plain Exception for a word its vocabulary lacks (no <unk>)
        if "Missing [UNK]" not in str(err):
            raise
        raise ValueError(f"the prompt holds a word that the vocabulary of {source!r} lacks, and that vocabulary has "
                         "no unknown-word token (<unk>) to stand for it: use only words of its vocabulary") from None
    if inputs["input_ids"].shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one character")
    new_tokens = None if args.target is not None else args.max_new_tokens  # (--target: its tokens are read instead)
    target_tokens = None
    if seq2seq and args.target is not None:  # (the decoder reads the target and its end token)
        target_tokens = len(tokenizer(args.target, add_special_tokens=False, verbose=False)["input_ids"])
        target_tokens += tokenizer.eos_token_id is not None
    fitted = _check_positions(model.config, inputs["input_ids"].shape[1], new_tokens, seq2seq, source,
                              default=args.default_new_tokens, target_tokens=target_tokens)
    if fitted is not None:
        args.max_new_tokens = fitted
    if args.compile is not None:
        if seq2seq:
            raise ValueError("--compile compiles a causal language model's decode step; "
                             f"{source!r} holds an encoder-decoder (seq2seq) model, whose steps run eagerly")
        _check_seqzoo_method(model, "compile_decoding", f"--compile {args.compile}", source)
        if args.compile not in torch._dynamo.list_backends(exclude_tags=()):
            usual = sorted({*torch._dynamo.list_backends(), "eager", "aot_eager"})
            raise ValueError(f"--compile {args.compile!r} is not a torch.compile backend here; choose from "
                             f"{', '.join(usual)} (default inductor)")
        model.compile_decoding(backend=args.compile)
    # (flag, method, layout), the head's last: it may be laid out otherwise than the other matrices.
    weight_layout = args.weight_layout
    if weight_layout == "auto":
        weight_layout = "columns" if _columns_pay(model, seq2seq, device, args) else "rows"
    layouts = [(f"--weight-layout {weight_layout}", "set_weight_layout", weight_layout)]
    layouts = layouts if weight_layout != "rows" else []
    if args.head_layout is not None:
        layouts.append((f"--head-layout {args.head_layout}", "set_head_layout", args.head_layout))
    if layouts and seq2seq:
        raise ValueError(f"{layouts[0][0]} lays out a causal language model's weights; {source!r} holds an "
                         "encoder-decoder (seq2seq) model")
    for flag, method, _ in layouts:  # every flag checked before any applies
        _check_seqzoo_method(model, method, flag, source)
    for _, method, layout in layouts:
        getattr(model, method)(layout)
    if args.show_attention or args.attention_plot or args.target is not None:
        if not seq2seq:
            raise ValueError("--show-attention, --attention-plot and --target need an encoder-decoder (seq2seq) "
                             f"model; {source!r} holds a {model.config.model_type} language model")
        decoding = [flag for flag, given in (("--num-beams", args.num_beams > 1), ("--temperature",
                                                                                  args.temperature > 0)) if given]
        if decoding:  # (the map follows one greedy decode, or the --target given)
            raise ValueError(f"{' and '.join(decoding)} cannot go with --show-attention, --attention-plot or "
                             "--target: the attention map is of the greedy output (or of --target)")
        if args.attention_plot:  # (before the decode and the table, not after them)
            from seqzoo.models.seq2seq.inspection import check_plot_path

            try:
                check_plot_path(args.attention_plot)
            except ValueError as err:
                raise ValueError(f"--attention-plot: {err}") from None
        with quiet_transformers():
            status = _show_attention(model, tokenizer, args)
        _note_unused_kernels(forced, chosen_before)
        return status
    sample = args.temperature > 0
    kwargs = dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=sample,
                  pad_token_id=tokenizer.pad_token_id)
    if sample:
        kwargs.update(temperature=args.temperature, top_p=1.0 if args.top_p is None else args.top_p,
                      top_k=0 if args.top_k is None else args.top_k)
    # Special tokens are left out as --no-stream leaves them out (the EOS a causal LM stops at; the decoder start
    # token an encoder-decoder's output, the target alone, begins with).
    decode = {"skip_special_tokens": True}
    streamer = (TextStreamer(tokenizer, skip_prompt=False, **decode)
                if args.num_beams == 1 and not args.no_stream else None)
    with torch.no_grad(), quiet_transformers():
        output = model.generate(**inputs, streamer=streamer, **kwargs)
    if streamer is None:
        print(tokenizer.decode(output[0], skip_special_tokens=True))
    _note_unused_kernels(forced, chosen_before)
    return 0


def _note_unused_kernels(forced: dict[str, Any], chosen_before: dict[str, int]) -> None:
    """Say which ``--kernel OP=BACKEND`` the model never used (an op of another architecture: ``wkv7`` on a
    Transformer), rather than leave the request silently without effect. (Forcing cleared the registry's cached
    choices, so an op the model called was chosen anew since ``chosen_before`` was counted.)"""
    from seqzoo.kernels.registry import selections

    unused = [op for op in forced if selections(op) == chosen_before[op]]
    if unused:
        requests = " ".join(f"{op}={forced[op]}" for op in unused)
        print(f"note: --kernel {requests} had no effect: this model ran no {', '.join(unused)} kernel (the classic "
              "models run rnn / lstm / gru, Mamba selective_scan and causal_conv1d, Mamba-2 ssd and causal_conv1d, "
              "RWKV-7 wkv7; attention runs none)", file=sys.stderr)


def _show_attention(model: Any, tokenizer: Any, args: argparse.Namespace) -> int:
    """The seeds' exercise: which source positions each target token attends to (printed, and plotted)."""
    from seqzoo.models.seq2seq.inspection import attention_map

    weights = attention_map(model, tokenizer, args.prompt, args.target, max_new_tokens=args.max_new_tokens)
    target = weights.target_text  # (not the tokens joined: a multi-byte character's bytes are a token each)
    print(f"source: {args.prompt}\ntarget: {target}" + ("" if args.target is not None else " (greedy)") + "\n")
    print(weights.text())
    if args.attention_plot:
        path = weights.plot(args.attention_plot, title=f"{weights.description}: {args.prompt!r} -> {target!r}")
        print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Build the smallest model of every registered architecture and generate from each (untrained: the text is
    noise; the point is that every architecture runs end to end through the same transformers API)."""
    import torch

    import seqzoo
    from seqzoo.registry import smallest_preset
    from seqzoo.tokenizer import byte_tokenizer
    from seqzoo.utils import count_parameters

    if args.max_new_tokens < 2:
        raise ValueError(f"--max-new-tokens={args.max_new_tokens} is invalid: must be >= 2 (the first token is "
                         f"the warm-up)")
    tokenizer = byte_tokenizer()
    inputs = tokenizer(args.prompt, return_tensors="pt")
    if inputs["input_ids"].shape[1] == 0:
        raise ValueError("--prompt is empty: give at least one character")
    rows = []
    for arch in seqzoo.list_architectures():
        preset = smallest_preset(arch)
        torch.manual_seed(args.seed)
        model = seqzoo.create_model(preset).eval()
        greedy = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id)
        clock = _TokenClock()
        with torch.no_grad(), quiet_transformers():
            model.generate(**inputs, max_new_tokens=1, **greedy)  # warm-up: one-time costs are not the model's
            output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, streamer=clock, **greedy)
        new_tokens = output[0] if model.config.is_encoder_decoder else output[0, inputs["input_ids"].shape[1]:]
        # Tokens 2..n timed within the one call (the clock's first entry is the prompt, or the decoder's start
        # token, its second the first new token); an untrained model may end early at EOS: the time is divided by
        # the tokens it generated. (Subtracting a separate call's prompt time let noise print 0.00.)
        steps = clock.times[1:]
        decode_ms = f"{1000 * (steps[-1] - steps[0]) / (len(steps) - 1):.2f}" if len(steps) > 1 else "-"
        text = tokenizer.decode(new_tokens, skip_special_tokens=True)
        rows.append([preset, f"{count_parameters(model):,}", decode_ms, repr(text[:40])])
    print_table(["preset", "params", "decode ms/token", "greedy continuation (untrained)"], rows)
    print(f"decode ms/token: the time of tokens 2..{args.max_new_tokens}, after the prompt and the first token, "
          f"on {torch.get_num_threads()} thread(s).")
    return 0


class _TokenClock:
    """A ``generate()`` streamer that only notes when each put (the prompt, then every new token) arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        import time

        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)] if rows else [len(h) for h in header]
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def _check_positions(config: Any, prompt_tokens: int, max_new_tokens: int | None, seq2seq: bool, source: str, *,
                     default: bool = False, target_tokens: int | None = None) -> int | None:
    """A model with learned or sinusoidal positions reads at most ``config.max_input_length`` of them: refuse a
    prompt, a --target (``target_tokens``, its end token counted) or a --max-new-tokens that would pass them before
    anything is printed (the model would stop part way, at the position, with an error that names neither). A
    causal LM reads the prompt and every new token but the last; an encoder-decoder reads the prompt (its source) in
    the encoder and its start token and new tokens but the last in the decoder. Returns the new tokens to generate:
    ``max_new_tokens``, or as many as fit where it is the ``default`` and more do not (said on stderr)."""
    longest = getattr(config, "max_input_length", None)
    if not isinstance(longest, int):  # (None: positions without a bound; another library's config)
        return max_new_tokens
    limit = f"{source!r} reads at most {longest} positions (max_position_embeddings)"
    if prompt_tokens > longest:
        raise ValueError(f"the prompt is {prompt_tokens} tokens and {limit}: shorten the prompt")
    if target_tokens is not None and target_tokens > longest:
        raise ValueError(f"--target is {target_tokens} tokens with its end-of-sequence token, and {limit}: shorten "
                         "the target")
    room = longest if seq2seq else longest - prompt_tokens + 1
    if max_new_tokens is not None and max_new_tokens > room:
        if default:
            print(f"note: generating {room} tokens, not the default {max_new_tokens}: {limit}", file=sys.stderr)
            return room
        after = "" if seq2seq else f" after this {prompt_tokens}-token prompt"
        raise ValueError(f"--max-new-tokens={max_new_tokens} is too many: {limit}, which leaves room for at most "
                         f"{room} new tokens{after}")
    return max_new_tokens


def _check_known_model_type(source: str) -> None:
    """A folder of a model_type that neither seqzoo nor transformers registers (a plugin's architecture whose package
    is not installed here, a folder saved by a later seqzoo): say so, where transformers would offer to run custom
    code that the folder does not hold."""
    import json

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = Path(source) / "config.json"
    if not path.is_file():
        return
    try:
        model_type = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return  # (transformers names what is wrong with the file)
    if isinstance(model_type, str) and model_type not in CONFIG_MAPPING:
        from seqzoo.registry import get_architecture, list_architectures

        ours = ", ".join(sorted(get_architecture(name).model_type for name in list_architectures()))
        raise ValueError(f"{source!r} holds a model of model_type {model_type!r}, which neither seqzoo nor "
                         f"transformers registers here (seqzoo's: {ours}): the architecture of a plugin whose package "
                         "is not installed, or of a later seqzoo?")


def _check_nothing_missing(model: Any, loading: dict[str, Any], source: str) -> None:
    """Refuse weights that from_pretrained initialised at random because the folder lacks them: a backbone saved
    without its head (``model.model.save_pretrained``, AutoModel) gets a fresh vocabulary head, and another
    library's checkpoint missing a tensor loads too; the report transformers prints is silenced here."""
    from seqzoo.utils import untrained_weights

    shown = untrained_weights(model, loading)
    if shown:
        raise ValueError(f"{source!r} lacks weights of {type(model).__name__} ({shown}), which would be initialised "
                         "anew, untrained: a backbone saved without its language-model head, or an incomplete "
                         "checkpoint; save the whole causal language model (its save_pretrained)")


def _check_generating_head(config: Any, source: str) -> None:
    """A folder saved as a classifier loads into AutoModelForCausalLM too, with a vocabulary head it never trained
    (tied to the embeddings, or newly initialised): refuse it rather than print what that head makes up."""
    from seqzoo.registry import saved_head

    try:
        saved_as, task = saved_head(config)
    except ValueError:  # another library's model (a converted GPT-2 folder): transformers' own checks apply
        return
    if task is not None and task not in ("causal-lm", "seq2seq"):
        raise ValueError(f"{source!r} holds a {saved_as} (the {task} head), which labels text and does not "
                         "generate it: its causal-LM head would be untrained; generate from a causal language model "
                         "or seq2seq folder")


def _columns_pay(model: Any, seq2seq: bool, device: Any, args: argparse.Namespace) -> bool:
    """What ``--weight-layout auto`` chooses: every weight matrix by columns where that was measured faster (one
    sequence decoding, on the CPU, in float32: 1.03-1.48x a step for every causal family but the Elman RNN, which is
    the same either way; BENCHMARKS.md, "Every weight matrix by columns"). A one-shot command trains nothing after,
    so the layout's caveats for optimizers do not arise. Rows for beams (a batch), other dtypes and devices, an
    encoder-decoder, a model of another library, and weights that are not plain tensors (quantised)."""
    import torch

    return (not seq2seq and callable(getattr(model, "set_weight_layout", None)) and torch.device(device).type == "cpu"
            and args.dtype == "float32" and args.num_beams == 1
            and all(type(p) is torch.nn.Parameter for p in model.parameters()))


def _check_seqzoo_method(model: Any, method: str, flag: str, source: str) -> None:
    # A folder of another library's class (transformers' GPT2LMHeadModel, an export) generates, but lacks seqzoo's
    # decoding options.
    if not callable(getattr(model, method, None)):
        raise ValueError(f"{flag.split()[0]} needs a seqzoo causal language model; {source!r} holds a "
                         f"{type(model).__name__}, which has no {method}(): generate without {flag}")


class _Parser(argparse.ArgumentParser):
    """argparse's own usage errors (an unknown option or command, a value of the wrong type) as the one ``error:``
    line every other mistake gets, instead of the usage block and ``seqzoo: error: ...``; status 2 as before.
    Sub-command parsers are of this class too (``add_subparsers`` makes them with the parent's class)."""

    def error(self, message: str) -> Any:  # argparse's signature: never returns
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="seqzoo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"seqzoo {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list model presets", description="List model presets with their sizes, the "
                       "state a sequence carries between tokens and the KV cache bytes per token; then the heads "
                       "(tasks) each architecture offers and whether it can be a bidirectional encoder.")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'lstm-*' or '*tiny'")
    p.add_argument("--params", action="store_true", help="also count parameters")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("kernels", help="list kernel ops, their backends and the one selected here",
                       description="List every kernel op and backend, whether it can run here (and why not) and "
                                   "which one a call on this machine's default device gets.")
    p.set_defaults(func=cmd_kernels)

    p = sub.add_parser("new", help="create a randomly initialised model from a preset and save it with its tokenizer",
                       description="Create a randomly initialised model from a preset and save it, with the byte "
                                   "tokenizer and a generation config, so `seqzoo generate`, `seqzoo train` and "
                                   "AutoModelForCausalLM.from_pretrained take the folder as it is.")
    p.add_argument("preset", help="a model preset from `seqzoo list`, e.g. lstm-small")
    p.add_argument("directory", help="folder to write (created; must be empty unless --force)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the random initialisation (default: 0)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config field overrides, e.g. --set hidden_size=128 dropout=0.1")
    p.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    p.set_defaults(func=cmd_new)

    p = sub.add_parser("generate", help="generate text from a saved model (folder or Hub repo id); for a seq2seq "
                       "model the prompt is the source",
                       description="Generate text from a model folder (written by `seqzoo new`, `seqzoo train` or "
                                   "save_pretrained) or a Hub repository id (owner/name). Greedy by default; "
                                   "--temperature > 0 samples (then --top-p and --top-k apply); --num-beams > 1 "
                                   "runs beam search. For an encoder-decoder (seq2seq) model the prompt is the "
                                   "source, and --show-attention shows what each target token attends to.")
    p.add_argument("model", help="a model folder, or a Hub repository id owner/name")
    p.add_argument("prompt", help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens to generate (default: 64; not with --target, whose tokens are read instead)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (default); > 0 (at least 1e-6) samples with this temperature")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: keep the most likely tokens up to this probability mass, in (0, 1] "
                        "(sampling only; default 1 = off)")
    p.add_argument("--top-k", type=int, default=None,
                   help="keep only the k most likely tokens (sampling only; default 0 = off)")
    p.add_argument("--num-beams", type=int, default=1,
                   help="beam search with this many beams (default: 1 = none); the text is printed when the search "
                        "ends (beams do not stream)")
    p.add_argument("--seed", type=seed_value, default=None, help="seed for sampling (sampling only; default: 0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype to load the weights in (default: float32)")
    p.add_argument("--kernel", nargs="+", default=[], metavar="OP=BACKEND",
                   help="force kernel backends, e.g. --kernel lstm=reference (see `seqzoo kernels`)")
    p.add_argument("--no-stream", action="store_true", help="print once at the end instead of streaming")
    p.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                   help="compile the decode step with torch.compile (backend inductor unless named): faster tokens "
                        "after a compile of seconds to minutes on the first ones (causal LMs; see BENCHMARKS.md)")
    p.add_argument("--weight-layout", choices=["auto", "rows", "columns"], default="auto",
                   help="columns: store every weight matrix by columns (the vocabulary head's included), faster for "
                        "one sequence on CPU (model.set_weight_layout; see BENCHMARKS.md); auto (default): columns "
                        "for a seqzoo causal LM decoding one sequence on the CPU in float32, else rows")
    p.add_argument("--head-layout", choices=["rows", "columns"],
                   help="the vocabulary head's alone (after --weight-layout): columns is faster for one sequence on "
                        "CPU with a large vocabulary (model.set_head_layout; see BENCHMARKS.md)")
    p.add_argument("--show-attention", action="store_true",
                   help="seq2seq models: print which source tokens each generated token attends to")
    p.add_argument("--attention-plot", metavar="PNG", help="seq2seq models: save the attention heat map there")
    p.add_argument("--target", help="seq2seq models: show the attention of this target instead of a generated one")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="build a tiny model of every architecture and generate from each",
                       description="Build the smallest preset of every registered architecture, untrained, and "
                                   "generate from each: the text is noise; the point is that every architecture "
                                   "runs end to end through the same transformers API. The timing is decode only "
                                   "(the prompt and the first token are timed apart).")
    p.add_argument("--prompt", default="How does a network remember? ", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=24, help="tokens to generate per model (default: 24)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the random initialisation (default: 0)")
    p.set_defaults(func=cmd_demo)

    for module_name in COMMAND_MODULES:
        register: Callable[[Any], None] = getattr(importlib.import_module(module_name), "register")
        register(sub)
    _add_debug_flag(parser)
    _name_own_parser(parser)
    return parser


def _name_own_parser(parser: argparse.ArgumentParser) -> None:
    """Give every (sub-)command's parser itself as the default ``parser``, so that an option it does not know is
    reported by the parser of the command written (``seqzoo generate --bogus``: see `seqzoo generate --help`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                subparser.set_defaults(parser=subparser)
                _name_own_parser(subparser)


def _add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """--debug on every (sub-)command, so it may go anywhere on the line."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                _add_debug_flag(child)


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    raw = os.environ.get(DEBUG_ENV, "").strip().lower()
    if raw not in ("", "0", "1", "false", "true"):
        raise ValueError(f"{DEBUG_ENV}={os.environ[DEBUG_ENV]!r} is invalid: 1 (show tracebacks) or 0")
    return raw in ("1", "true") or bool(getattr(args, "debug", False))


# The environment variables seqzoo reads (the last three: its test suite's and benchmarks').
KNOWN_ENV = ("SEQZOO_KERNELS", DEBUG_ENV, "SEQZOO_TRITON_AOT", "SEQZOO_OTHER_TRANSFORMERS_PYTHON",
             "SEQZOO_REQUIRE_TORCHAO", "SEQZOO_MUTATION")


def warn_unknown_env() -> list[str]:
    """One line on standard error for each ``SEQZOO_*`` variable seqzoo does not read: a misspelt name
    (``SEQZOO_KERNEL``) would otherwise change nothing without a word. Returns the names."""
    warned = []
    for name in sorted(n for n in os.environ if n.startswith("SEQZOO_") and n not in KNOWN_ENV):
        close = difflib.get_close_matches(name, KNOWN_ENV, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"warning: the environment variable {name} is not one seqzoo reads{hint}; it reads "
              f"{', '.join(KNOWN_ENV[:3])}", file=sys.stderr)
        warned.append(name)
    return warned


def _is_utf8(word: str) -> bool:
    # Python hands on a command-line argument's bytes that are not UTF-8 as lone surrogates (PEP 383).
    try:
        word.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(word: str) -> str:
    # (the bytes as given, those that are not UTF-8 written \xNN)
    return "'" + word.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") + "'"


_OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=")  # a KEY=VALUE override


def main(argv: list[str] | None = None, *, before_command: Callable[[], None] | None = None) -> int:
    """Parse ``argv`` and run the command. ``before_command`` runs between the two (the console script imports
    the package there, so that --help and --version answer without torch)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives a positional list (``seqzoo train R k=v``) only the words before the first option; overrides
    # written after an option (``seqzoo train R --output-dir X k=v``) come back unparsed and join the list.
    if isinstance(getattr(args, "overrides", None), list):
        resume = getattr(args, "resume", None)
        if isinstance(resume, str) and _OVERRIDE.match(resume) and not Path(resume).exists():
            # ``--resume k=v``: --resume takes an optional PATH, so argparse gave it the override that followed it
            args.overrides.append(resume)
            args.resume = True
        args.overrides += [word for word in extra if _OVERRIDE.match(word)]
        extra = [word for word in extra if not _OVERRIDE.match(word)]
    if extra:  # (named by the command's own parser, whose --help lists the options it takes)
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv  # the exact command line, for reports that say what produced them
    for word in argv:
        if not _is_utf8(word):
            # (a folder name of other bytes: safetensors, tokenizers and the reports' JSON cannot take it)
            getattr(args, "parser", parser).error(
                f"the argument {_shown(word)} is not valid UTF-8 text; seqzoo reads and writes file names, prompts "
                "and values as UTF-8: rename the file or folder, or retype the value")
    warned = warn_unknown_env()
    try:
        debug = debug_requested(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if before_command is not None:
            before_command()
        if warned:  # (the kernel registry would warn about a misspelt SEQZOO_KERNELS again, in its own words)
            from seqzoo.kernels import registry as kernel_registry

            kernel_registry._WARNED_ENV.update(warned)
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        hint = INTERRUPT_HINTS.get(args.command)
        print("\ninterrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 -- one line for the user; --debug shows the traceback
        if debug:
            raise
        print(f"error: {describe_error(err)}", file=sys.stderr)
        if not is_user_error(err):
            print(f"(an unexpected {type(err).__name__}; run again with --debug for the traceback and report it)",
                  file=sys.stderr)
            return EXIT_INTERNAL
        return EXIT_USAGE


def is_user_error(err: BaseException) -> bool:
    """Errors that mean the input was wrong (bad values, files, backends), not that seqzoo is broken."""
    from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError

    from seqzoo.kernels.registry import KernelError

    # transformers' configs raise huggingface_hub's validation errors for a config.json field of the wrong type
    return isinstance(err, (ValueError, KernelError, OSError, StrictDataclassFieldValidationError,
                            StrictDataclassClassValidationError))


def describe_error(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.strerror}: {str(err.filename)!r}"
    if not text:
        return type(err).__name__
    return " ".join(text.splitlines()) if len(text) < 400 else text.splitlines()[0]


if __name__ == "__main__":
    sys.exit(main())
