"""`seqzoo generate`: text from a saved model (a folder or a Hub repository id), greedy, sampled or by beam search,
with the checks that turn what generate() would reject deep inside, or silently ignore, into one-line errors."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from seqzoo.utils import parse_overrides, quiet_transformers, seed_value


def register(sub: Any) -> None:
    """Add `seqzoo generate` to the command line's sub-commands (no torch imported: --help stays quick)."""
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
    p.add_argument("--kernel", nargs="+", action="extend", default=[], metavar="OP=BACKEND",
                   help="force kernel backends, e.g. --kernel lstm=reference (see `seqzoo kernels`)")
    p.add_argument("--no-stream", action="store_true", help="print once at the end instead of streaming")
    p.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                   help="compile the decode step with torch.compile (backend inductor unless named): faster tokens "
                        "after a compile of seconds to minutes on the first ones (causal LMs; see BENCHMARKS.md). "
                        "The steps skip dynamo's checks of the model's modules and weights, which nothing changes "
                        "while the command decodes")
    p.add_argument("--weight-layout", choices=["auto", "rows", "columns"], default="auto",
                   help="columns: store every weight matrix by columns (the vocabulary head's included), faster for "
                        "one sequence on CPU (model.set_weight_layout; see BENCHMARKS.md); auto (default): columns "
                        "for a seqzoo causal LM decoding one sequence on the CPU in float32 (but rows for an RWKV-7 "
                        "768 wide or more at two threads or more where oneDNN multiplies one row, not by default on an "
                        "Intel processor, and with --compile (inductor), whose compiled step by rows ran as fast "
                        "or faster), else rows")
    p.add_argument("--head-layout", choices=["rows", "columns"],
                   help="the vocabulary head's alone (after --weight-layout): columns is faster for one sequence on "
                        "CPU with a large vocabulary (model.set_head_layout; see BENCHMARKS.md)")
    p.add_argument("--show-attention", action="store_true",
                   help="seq2seq models: print which source tokens each generated token attends to")
    p.add_argument("--attention-plot", metavar="PNG", help="seq2seq models: save the attention heat map there")
    p.add_argument("--target", help="seq2seq models: show the attention of this target instead of a generated one")
    p.set_defaults(func=cmd_generate)


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
    """``--kernel OP=BACKEND`` holds for this command only: the kernel selection in force before it (a Python
    caller's ``seqzoo.set_kernel_backend``, or none) is back when it returns or fails."""
    import contextlib

    import seqzoo  # noqa: F401  (registers the architectures)
    from seqzoo.kernels import use_backend
    from seqzoo.kernels.registry import check_environment

    check_generation_args(args)
    check_environment()  # (a misspelt SEQZOO_KERNELS entry was named only after the prompt was printed)
    device = resolve_device(args.device)
    check_model_source(args.model)
    forced = parse_overrides(args.kernel, "--kernel")
    with contextlib.ExitStack() as forcing:
        for op, backend in forced.items():
            # (as written: a value read as JSON, `lstm=null`, was named 'None'; forcing clears the registry's cached
            # choices: see _note_unused_kernels)
            forcing.enter_context(use_backend(op, backend if isinstance(backend, str) else json.dumps(backend)))
        return _generate(args, device, forced)


def _generate(args: argparse.Namespace, device: str, forced: dict[str, Any]) -> int:
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        TextStreamer,
    )

    from seqzoo.kernels.registry import selections as kernel_selections
    from seqzoo.models.compiled_decoding import backend_installed, fixed_model_options
    from seqzoo.tokenizer import load_tokenizer

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
    pad = tokenizer.pad_token
    if pad and pad not in (tokenizer.eos_token, tokenizer.bos_token) and pad in args.prompt:
        # (read as the one padding token, which the model then reads as input, and left out of the text printed)
        raise ValueError(f"the prompt holds {pad!r}, which the tokenizer of {source!r} reads as its padding token "
                         f"(id {tokenizer.pad_token_id}), not as text: remove it")
    try:
        with quiet_transformers():  # (its "Token indices sequence length is longer" line, above seqzoo's own error)
            inputs = tokenizer(args.prompt, return_tensors="pt").to(device)
    except Exception as err:  # tokenizers raises a plain Exception for a word its vocabulary lacks (no <unk>)
        if "Missing [UNK]" not in str(err):
            raise
        raise ValueError(f"the prompt holds a word that the vocabulary of {source!r} lacks, and that vocabulary has "
                         "no unknown-word token (<unk>) to stand for it: use only words of its vocabulary") from None
    if inputs["input_ids"].shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one character")
    # A special token written in the prompt (<|endoftext|> between two texts) is read as that token, which the text
    # printed leaves out, as it leaves out the one the model ends on: said, not dropped without a word.
    # (those of the text only: not a BOS the tokenizer adds to every prompt)
    written = tokenizer(args.prompt, add_special_tokens=False, verbose=False)["input_ids"]
    # (and not the unknown-word token, which stands for a word the vocabulary lacks, not one written as such)
    special = sorted(set(written) & (set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}))
    if special:
        shown = ", ".join(f"{tokenizer.convert_ids_to_tokens(i)!r} (id {i})" for i in special)
        print(f"note: the prompt holds the tokenizer's special token(s) {shown}: the model reads them as such, and "
              "the text printed leaves them out", file=sys.stderr)
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
            # (the ones usable here: a backend whose package is missing, or CUDA graphs without CUDA, is refused)
            usual = sorted(name for name in {*torch._dynamo.list_backends(), "eager", "aot_eager"}
                           if backend_installed(name) and (name != "cudagraphs" or torch.cuda.is_available()))
            raise ValueError(f"--compile {args.compile!r} is not a torch.compile backend here; choose from "
                             f"{', '.join(usual)} (default inductor)")
        # (nothing changes the model from here on but the layouts below, set before its first step: its steps skip
        # dynamo's guards on its modules and weights)
        model.compile_decoding(backend=args.compile, **fixed_model_options())
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
    if args.show_attention or args.attention_plot is not None or args.target is not None:
        if not seq2seq:
            raise ValueError("--show-attention, --attention-plot and --target need an encoder-decoder (seq2seq) "
                             f"model; {source!r} holds a {model.config.model_type} language model")
        decoding = [flag for flag, given in (("--num-beams", args.num_beams > 1), ("--temperature",
                                                                                  args.temperature > 0)) if given]
        if decoding:  # (the map follows one greedy decode, or the --target given)
            raise ValueError(f"{' and '.join(decoding)} cannot go with --show-attention, --attention-plot or "
                             "--target: the attention map is of the greedy output (or of --target)")
        if args.no_stream:  # (it was accepted and changed nothing)
            raise ValueError("--no-stream has no effect with --show-attention, --attention-plot or --target: their "
                             "table is printed once, when the decode ends; leave it out")
        if args.attention_plot is not None:  # (before the decode and the table, not after them)
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
    # (the sequences alone, whatever the folder's generation_config.json says of return_dict_in_generate: printed
    # as a Python list otherwise; one sequence, the one printed, whatever it says of num_return_sequences: the
    # streamer refused several, and greedy decoding refused a saved number above 1; and the tokenizer, which a saved
    # stop_strings needs)
    kwargs = dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=sample,
                  num_return_sequences=1, pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=False,
                  tokenizer=tokenizer)
    if sample:
        kwargs.update(temperature=args.temperature, top_p=1.0 if args.top_p is None else args.top_p,
                      top_k=0 if args.top_k is None else args.top_k)
    # Special tokens are left out as --no-stream leaves them out (the EOS a causal LM stops at; the decoder start
    # token an encoder-decoder's output, the target alone, begins with).
    decode = {"skip_special_tokens": True}
    streamer = (TextStreamer(tokenizer, skip_prompt=False, **decode)
                if args.num_beams == 1 and not args.no_stream else None)
    # (nothing changes the model while it decodes: a seqzoo causal LM's planned steps check it once, not at each token)
    fixed = getattr(model, "fixed_while_decoding", None)
    with torch.no_grad(), quiet_transformers(), fixed() if callable(fixed) else contextlib.nullcontext():
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
    if args.attention_plot is not None:
        path = weights.plot(args.attention_plot, title=f"{weights.description}: {args.prompt!r} -> {target!r}")
        print(f"wrote {path}")
    return 0


def _dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


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
    is not installed here, a folder saved by a later seqzoo), or a config.json without one: say so, where transformers
    would offer to run custom code that the folder does not hold."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = Path(source) / "config.json"
    if not path.is_file():
        return
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        model_type = values.get("model_type")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return  # (transformers names what is wrong with the file)
    def ours() -> str:
        from seqzoo.registry import get_architecture, list_architectures

        return ", ".join(sorted(get_architecture(name).model_type for name in list_architectures()))

    if "model_type" not in values:  # (transformers would say the folder holds custom code to run)
        raise ValueError(f"{str(path)!r} has no model_type field, which names the model's architecture (seqzoo's: "
                         f"{ours()}); the file is damaged, or not a model's config")
    if isinstance(model_type, str) and model_type not in CONFIG_MAPPING:
        raise ValueError(f"{source!r} holds a model of model_type {model_type!r}, which neither seqzoo nor "
                         f"transformers registers here (seqzoo's: {ours()}): the architecture of a plugin whose "
                         "package is not installed, or of a later seqzoo?")


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
    encoder-decoder, a model of another library, and weights that are not plain tensors (quantised). Rows, too, for
    an RWKV-7 whose square maps are large enough for its step to multiply them by oneDNN (768 wide and up), at two
    threads or more, where oneDNN's product multiplies one row (not by default where MKL runs on an Intel processor:
    seqzoo/kernels/product_choice.py): by rows its step then runs every large product by oneDNN, on every thread, where
    MKL's product by columns ran on one (BENCHMARKS.md, run AI: 768 / 12 / 65536 at two threads 32-37 against 39-42 ms
    a token; at one thread columns stays ahead, 41 against 44). And rows where inductor compiles the decode steps
    (``--compile``): its steps then multiply one sequence by weights stored by rows in loops of their own
    (seqzoo/kernels/one_row_products.py), which ran faster than its steps by columns for every family on an AMD
    processor (BENCHMARKS.md, run AJ); on an Intel one, which compiles without those loops, by rows read as fast as
    by columns or faster (run AK)."""
    import torch

    from seqzoo.kernels import one_row_products, onednn_linear
    from seqzoo.models.rwkv7.configuration_rwkv7 import RWKV7Config

    if getattr(args, "compile", None) == "inductor" and one_row_products.AVAILABLE:
        return False
    if (isinstance(getattr(model, "config", None), RWKV7Config) and torch.get_num_threads() >= 2
            and model.config.hidden_size ** 2 >= onednn_linear.MIN_WEIGHT_ELEMENTS and onednn_linear.rows_from() == 1):
        return False
    return (not seq2seq and callable(getattr(model, "set_weight_layout", None)) and torch.device(device).type == "cpu"
            and args.dtype == "float32" and args.num_beams == 1
            and all(type(p) is torch.nn.Parameter for p in model.parameters()))


def _check_seqzoo_method(model: Any, method: str, flag: str, source: str) -> None:
    # A folder of another library's class (transformers' GPT2LMHeadModel, an export) generates, but lacks seqzoo's
    # decoding options.
    if not callable(getattr(model, method, None)):
        raise ValueError(f"{flag.split()[0]} needs a seqzoo causal language model; {source!r} holds a "
                         f"{type(model).__name__}, which has no {method}(): generate without {flag}")
