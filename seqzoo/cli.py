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
COMMAND_MODULES: list[str] = [
    "seqzoo.generate_cli", "seqzoo.conversions.cli", "seqzoo.hub.cli", "seqzoo.training.cli", "seqzoo.lab.cli",
]

DEBUG_ENV = "SEQZOO_DEBUG"
EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 1, 130
EXIT_BROKEN_PIPE = 141  # (128 + SIGPIPE: what a shell reports for a writer whose reader went away)

# What to do after Ctrl-C, per command; the message is one line either way.
INTERRUPT_HINTS = {
    "train": "run the same command with --resume to continue from the newest checkpoint (one is written every "
             "train.save_every steps; where none was written yet, with --force to start over)",
    "lab": "the report folder holds no finished report; run `seqzoo lab` again (`seqzoo lab --resume` with the same "
           "options keeps the training runs that finished)",
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
        reason = r["why_unavailable"]
        if reason:
            available = f"no [{reasons.setdefault(reason, len(reasons) + 1)}]"
        selected = ("forced" if r["forced"] else "yes") if r["selected"] and broken is None else ""
        rows.append([r["op"], r["backend"], r["priority"], available, selected, r["description"]])
    print_table(["op", "backend", "priority", "available", "selected", "notes"], rows)
    for reason, mark in reasons.items():
        print(f"[{mark}] {reason}")
    if broken is None:  # (a SEQZOO_PRODUCTS that names no choice is the error below)
        print(_products_line())
    if broken is not None:
        raise broken
    for r in rows_seen:
        if r["forced"] and not r["available"]:  # every call of the op would raise: say so, as for a typo
            raise KernelError(f"SEQZOO_KERNELS requests backend {r['backend']!r} for op {r['op']!r}, which is not "
                              f"available here; every {r['op']} call would raise")
        if r["forced"] and not r.get("runs_here", True):  # (Triton's interpreter makes them importable on a CPU)
            raise KernelError(f"SEQZOO_KERNELS requests backend {r['backend']!r} for op {r['op']!r}, which runs on "
                              f"another device than this machine's ({_this_device()}): every {r['op']} call on its "
                              "tensors would raise")
    return 0


def _products_line() -> str:
    """Who multiplies a decode step's rows by a weight stored by rows on this CPU, as things are set: the choice
    (seqzoo.kernels.product_choice) as oneDNN's product and inductor's graph passes, where present, apply it."""
    import torch

    from seqzoo.kernels import one_row_products, onednn_linear, product_choice

    vendor = product_choice.processor_vendor() or "of an unknown vendor"
    torchs = "torch's (F.linear, MKL's)" if torch.backends.mkl.is_available() else "torch's (F.linear)"
    rows = onednn_linear.rows_from()  # (what runs: NEVER where oneDNN is off or not in this torch)
    eager = (f"eagerly {torchs}" if rows > onednn_linear.MAX_ROWS
             else "eagerly oneDNN's" if rows == 1 else f"eagerly {torchs} below {rows} rows and oneDNN's from {rows}")
    loops = product_choice.seqzoo_products() and one_row_products.AVAILABLE
    compiled = "compiled, inductor's own loops for one row" if loops else "compiled, inductor's product"
    off = [] if onednn_linear.available() else ["oneDNN's product is off or not in this torch"]
    if product_choice.seqzoo_products() and not one_row_products.AVAILABLE:
        off.append("this torch has no inductor graph passes")
    how = ("by default" if product_choice.chosen() == "auto"
           else f"as set ({product_choice.ENV}={product_choice.chosen()})" if product_choice.from_environment()
           else f"as set (seqzoo.kernels.product_choice.set_products({product_choice.chosen()!r}))")
    return (f"CPU decoding, up to {onednn_linear.MAX_ROWS} rows times a weight stored by rows: {eager}; {compiled}; "
            f"{how}, on this processor ({vendor}){''.join(f'; {why}' for why in off)}; "
            f"{product_choice.ENV} or seqzoo.kernels.product_choice.set_products() chooses")


def _this_device() -> str:
    from seqzoo.kernels.registry import _default_device

    return _default_device()


def cmd_new(args: argparse.Namespace) -> int:
    import torch

    import seqzoo
    from seqzoo.outputs import check_named
    from seqzoo.utils import count_parameters

    check_named(args.directory, "directory")
    out = Path(args.directory)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{str(out)!r} is a file, not a folder")
    occupied = out.exists() and any(out.iterdir())
    if occupied and not args.force:
        raise ValueError(f"{str(out)!r} exists and is not empty (pass --force to write into it)")
    from seqzoo.hub.publishing import model_files
    from seqzoo.outputs import describe, staged_folder

    torch.manual_seed(args.seed)
    model = seqzoo.create_model(args.preset, **parse_overrides(args.set, "--set"))
    # --force replaces the model the folder held: its files the new model does not write (a shard index and its
    # shards, an adapter, another tokenizer, its training record) would be read with the new model. Other files stay.
    old = model_files(out) if occupied else []
    if "config.json" in old:
        _refuse_other_config(out, old)
    try:
        # Built beside `out` and moved into place whole, so a failure never leaves a config.json without weights.
        # (the model's files listed again once this process holds the folder: another may have written one since)
        with staged_folder(out, merge=occupied, replaces=lambda: model_files(out)) as staging:
            save_with_tokenizer(model, staging)
    except OSError as err:
        raise ValueError(describe(err)) from err
    removed = [name for name in old if not (out / name).exists()]
    shown = ", ".join(removed[:6]) + (f" and {len(removed) - 6} more" if len(removed) > 6 else "")
    note = f"; removed {len(removed)} file(s) of the model it replaced that this one does not write: {shown}" \
        if removed else ""
    print(f"saved {args.preset} ({type(model).__name__}, {count_parameters(model):,} parameters) to {out}{note}")
    return 0


def _refuse_other_config(out: Path, old: list[str]) -> None:
    """--force replaces the model a folder holds: refuse a ``config.json`` that is no model's (a JSON object without
    a ``model_type``, or no JSON, with no weights beside it), such as a program's settings, which the new model's
    config.json was written over."""
    import json

    from seqzoo.hub.publishing import is_weight_file

    try:
        values = json.loads((out / "config.json").read_bytes())
    except (OSError, ValueError, RecursionError):
        values = None
    if (isinstance(values, dict) and isinstance(values.get("model_type"), str)) or any(map(is_weight_file, old)):
        return
    raise ValueError(f"{str(out / 'config.json')!r} is no model's config (it names no model_type, and no weights are "
                     "beside it), and --force would write the new model's over it; move it, or choose another folder")


def save_with_tokenizer(model: Any, directory: Path) -> None:
    """Save a model with the byte tokenizer and a generation config, ready for AutoTokenizer and pipelines."""
    from seqzoo.tokenizer import VOCAB_SIZE, ids_other_than_bytes, tokenizer_for

    if model.config.vocab_size < VOCAB_SIZE:
        raise ValueError(
            f"the byte tokenizer needs vocab_size >= {VOCAB_SIZE}; this model has vocab_size={model.config.vocab_size}"
        )
    tokenizer = tokenizer_for(model)
    # (the tokenizer saved beside the model fixes its special tokens; a config's other ids would be read by nothing
    # that generates: the generation config below takes the tokenizer's)
    differing = ids_other_than_bytes({name: getattr(model.config, name, None)
                                      for name in ("pad_token_id", "bos_token_id", "eos_token_id")})
    if differing:
        raise ValueError(
            f"{', '.join(differing)} disagree with the byte tokenizer saved beside the model, whose pad token is "
            f"{tokenizer.pad_token_id} and whose bos and eos token is {tokenizer.eos_token_id}: leave the token ids "
            "unset (or give those), or save the model with a tokenizer of your own (save_pretrained)")
    directory.mkdir(parents=True, exist_ok=True)
    generation = model.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    with quiet_transformers():  # its "Writing model shards" bar for one small file is noise on the console
        model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


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
        # (escaped to ASCII: an untrained model's random bytes, which repr kept as they are, and an output in cp1252,
        # Windows' redirected to a file or a pipe, could not print: "cannot print '\ufffd\ufffd\u0683'")
        rows.append([preset, f"{count_parameters(model):,}", decode_ms, ascii(text[:40])])
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


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)] if rows else [len(h) for h in header]
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


class _Parser(argparse.ArgumentParser):
    """argparse's own usage errors (an unknown option or command, a value of the wrong type) as the one ``error:``
    line every other mistake gets, instead of the usage block and ``seqzoo: error: ...``; status 2 as before.
    Sub-command parsers are of this class too (``add_subparsers`` makes them with the parent's class)."""

    def error(self, message: str) -> Any:  # argparse's signature: never returns
        self.exit(2, f"error: {self.prog}: {message}{self._dash_hint()} (see `{self.prog} --help`)\n")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._words = list(sys.argv[1:] if args is None else args)  # (what the hint below reads)
        return super().parse_known_args(args, namespace)

    def _dash_hint(self) -> str:
        """Where a word that begins with one '-' and is none of this command's options stands among its words (a
        prompt such as "-hello", which argparse reads as -h given "ello"): how to pass it as a value."""
        words = getattr(self, "_words", [])
        if "--" in words or all(action.option_strings for action in self._actions):  # (no value to give)
            return ""
        options = self._option_string_actions
        dashed = next((word for before, word in zip([None, *words], words)
                       if word.startswith("-") and not word.startswith("--") and len(word) > 2 and word not in options
                       and not _number(word) and getattr(options.get(before), "nargs", 0) == 0), None)
        if dashed is None:
            return ""
        return f"; a value that begins with '-', such as {dashed!r}, goes after '--': `{self.prog} ... -- {dashed!r}`"


def _number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


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
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config field overrides, e.g. --set hidden_size=128 dropout=0.1")
    p.add_argument("--force", action="store_true",
                   help="write into a folder that is not empty, replacing the model it held (its weights, shards, "
                        "adapter, tokenizer files are removed); other files stay (a config.json that is no model's "
                        "is refused)")
    p.set_defaults(func=cmd_new)

    p = sub.add_parser("demo", help="build a tiny model of every architecture and generate from each",
                       description="Build the smallest preset of every registered architecture, untrained, and "
                                   "generate from each: the text is noise; the point is that every architecture "
                                   "runs end to end through the same transformers API. The timing is decode only "
                                   "(the prompt and the first token are timed apart).")
    p.add_argument("--prompt", default="How does a network remember? ",
                   help="text to continue (default: 'How does a network remember? ')")
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
KNOWN_ENV = ("SEQZOO_KERNELS", DEBUG_ENV, "SEQZOO_PRODUCTS", "SEQZOO_TRITON_AOT", "SEQZOO_OTHER_TRANSFORMERS_PYTHON",
             "SEQZOO_REQUIRE_TORCHAO", "SEQZOO_MUTATION")


def warn_unknown_env() -> list[str]:
    """One line on standard error for each ``SEQZOO_*`` variable seqzoo does not read: a misspelt name
    (``SEQZOO_KERNEL``) would otherwise change nothing without a word. Returns the names."""
    warned = []
    # (any case: ``seqzoo_debug=1`` is not read either, and the kernel registry warns about ``seqzoo_kernels`` too)
    for name in sorted(n for n in os.environ if n.upper().startswith("SEQZOO_") and n not in KNOWN_ENV):
        close = difflib.get_close_matches(name.upper(), KNOWN_ENV, n=1)
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
    try:
        raw = word.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte ("\ud800"): main(argv) called with it
        return repr(word)
    return "'" + raw.decode("utf-8", "backslashreplace") + "'"


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
        # (the lab's sub-commands have no --resume: their own line says so)
        hint = None if getattr(args, "lab_command", None) else INTERRUPT_HINTS.get(args.command)
        print("\ninterrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 -- one line for the user; --debug shows the traceback
        if debug:
            raise
        if isinstance(err, BrokenPipeError) and _stdout_closed():
            # The output's reader went away (``seqzoo list | head -1``): nothing went wrong to report. (Another
            # pipe's, a child process's or a socket's, is an error as any other.)
            return EXIT_BROKEN_PIPE
        print(f"error: {describe_error(err)}", file=sys.stderr)
        if not is_user_error(err):
            print(f"(an unexpected {type(err).__name__}; run again with --debug for the traceback and report it)",
                  file=sys.stderr)
            return EXIT_INTERNAL
        return EXIT_USAGE


def _stdout_closed() -> bool:
    """Whether standard output's reader has gone (its pipe reports an error); if so, standard output is pointed at
    the null device, so that the interpreter's own flush at exit does not fail and print a traceback. False where
    that cannot be told (no poll on Windows: the error is then reported as any other)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        closed = any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
        if closed:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return closed
    except (AttributeError, OSError, ValueError):  # (no poll, or a stdout that is no file)
        return False


def is_user_error(err: BaseException) -> bool:
    """Errors that mean the input was wrong (bad values, files, backends), not that seqzoo is broken."""
    from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError

    from seqzoo.kernels.registry import KernelError

    # transformers' configs raise huggingface_hub's validation errors for a config.json field of the wrong type
    return isinstance(err, (ValueError, KernelError, OSError, StrictDataclassFieldValidationError,
                            StrictDataclassClassValidationError))


def describe_error(err: BaseException) -> str:
    if isinstance(err, UnicodeEncodeError):  # (printing text the console's encoding cannot hold)
        # (a code page's codec, Windows' cp1252 among them, calls itself 'charmap' in its error: the output names it)
        encoding = err.encoding
        if encoding == "charmap":
            encoding = getattr(sys.stdout, "encoding", None) or encoding
        return (f"cannot print {err.object[err.start:err.end]!r}: the output's encoding is {encoding}; set "
                "PYTHONIOENCODING=utf-8 (or a UTF-8 locale) to print any text")
    text = str(err).strip()
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.strerror}: {str(err.filename)!r}"
    if not text:
        return type(err).__name__
    return " ".join(text.splitlines()) if len(text) < 400 else text.splitlines()[0]


if __name__ == "__main__":
    sys.exit(main())
