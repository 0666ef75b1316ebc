"""``seqzoo convert <source> <src> <dst>`` (one sub-command per source format) and ``seqzoo export --to <format>``.

To add a source, write an ``add_<source>(sources)`` function that adds its parser (with ``func`` set) and append it
to ``SOURCES``.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

DTYPE_CHOICES = ["float32", "bfloat16", "float16"]


def _common(p: argparse.ArgumentParser, source_help: str) -> None:
    p.add_argument("source", help=source_help)
    p.add_argument("destination", help="folder to write the seqzoo model to")
    p.add_argument("--dtype", default=None, choices=DTYPE_CHOICES,
                   help="dtype of the converted weights (default: the source's)")


def _dtype(args: argparse.Namespace) -> Any:
    from seqzoo.conversions.checkpoints import DTYPES

    return DTYPES[args.dtype] if args.dtype else None


def _report(args: argparse.Namespace, model: Any, extra: str = "") -> int:
    from seqzoo.utils import count_parameters

    params = count_parameters(model)
    print(f"converted {args.source} -> {args.destination} ({type(model).__name__}, {params:,} parameters, "
          f"{model.dtype}){extra}")
    return 0


def _world_tokenizer(args: argparse.Namespace) -> Any:
    """The World tokenizer when --world-tokenizer is given (else None), built before anything is read or written:
    without the rwkv package it fails here, not after the model is saved (which would leave a folder that a second
    try refuses)."""
    if not getattr(args, "world_tokenizer", False):
        return None
    from seqzoo.conversions.world_tokenizer import world_tokenizer

    return world_tokenizer()


def _save_world_tokenizer(args: argparse.Namespace, model: Any, tokenizer: Any) -> str:
    """Save ``tokenizer`` (from :func:`_world_tokenizer`) and ``model``, whole or not at all
    (:func:`~seqzoo.conversions.checkpoints.staged_destination`); refuses a model whose embedding is not the World
    vocabulary's (a Pile / GPT-NeoX RWKV-7 would read World ids as other tokens, silently)."""
    from seqzoo.conversions.checkpoints import staged_destination
    from seqzoo.conversions.world_tokenizer import WORLD_VOCAB_SIZE

    if tokenizer is not None and model.config.vocab_size != WORLD_VOCAB_SIZE:
        raise ValueError(f"--world-tokenizer: the checkpoint's embedding has {model.config.vocab_size} rows, but RWKV "
                         f"World models have {WORLD_VOCAB_SIZE}; this checkpoint was trained with another tokenizer. "
                         "Convert it without --world-tokenizer")
    with staged_destination(args.destination) as staging:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    return "" if tokenizer is None else "; RWKV World tokenizer saved with it"


def _take_world_token_ids(model: Any, tokenizer: Any) -> str:
    """Give ``model``'s config and generation config the World tokenizer's pad / bos / eos ids (all 0,
    ``<|endoftext|>``) where the source's config said otherwise (fla's ``RWKV7Config`` defaults to bos 1, eos 2: kept,
    generation would not stop at the end of a text); returns a note of what changed."""
    changed = []
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        wanted = getattr(tokenizer, name)
        if getattr(model.config, name) != wanted:
            changed.append(f"{name} {getattr(model.config, name)} -> {wanted}")
            setattr(model.config, name, wanted)
            setattr(model.generation_config, name, wanted)
    return f"; the World tokenizer's token ids taken ({', '.join(changed)})" if changed else ""


def add_transformers_source(sources: Any, name: str, help_text: str, module: str, function: str) -> None:
    p = sources.add_parser(name, help=help_text)
    _common(p, "folder saved by save_pretrained (sharded safetensors are read tensor by tensor), or a Hub repo id")

    def run(args: argparse.Namespace) -> int:
        import importlib

        import seqzoo  # noqa: F401  (registers the architectures)

        convert = getattr(importlib.import_module(f"seqzoo.conversions.{module}"), function)
        return _report(args, convert(args.source, args.destination, dtype=_dtype(args)))

    p.set_defaults(func=run)


def add_hf_mamba(sources: Any) -> None:
    add_transformers_source(sources, "hf-mamba", "transformers MambaForCausalLM / Mamba2ForCausalLM -> seqzoo Mamba / "
                            "Mamba-2", "hf_mamba", "convert_hf_mamba_folder")


def add_llama(sources: Any) -> None:
    add_transformers_source(sources, "llama", "transformers LlamaForCausalLM (and Mistral / Qwen2) -> seqzoo "
                            "Transformer", "llama", "convert_llama_folder")


def add_gpt2(sources: Any) -> None:
    add_transformers_source(sources, "gpt2", "transformers GPT2LMHeadModel -> seqzoo Transformer", "gpt2",
                            "convert_gpt2_folder")


def add_mamba_ssm(sources: Any) -> None:
    p = sources.add_parser("mamba-ssm", help="raw mamba_ssm checkpoint folder (d_model, n_layer, ssm_cfg) -> seqzoo "
                                             "Mamba / Mamba-2")
    _common(p, "folder with mamba_ssm's config.json and pytorch_model.bin (or safetensors)")

    def run(args: argparse.Namespace) -> int:
        import seqzoo  # noqa: F401
        from seqzoo.conversions.mamba_ssm import convert_mamba_ssm_folder

        return _report(args, convert_mamba_ssm_folder(args.source, args.destination, dtype=_dtype(args)))

    p.set_defaults(func=run)


def add_rwkv7(sources: Any) -> None:
    p = sources.add_parser("rwkv7", help="RWKV-LM RWKV-7 'x070' .pth checkpoint -> seqzoo RWKV-7")
    _common(p, ".pth state dict saved by RWKV-LM (RWKV-7 x070)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config fields the checkpoint does not fix: pad/bos/eos_token_id, use_cache, layer_norm_eps, "
                        "group_norm_eps (RWKV World models use bos_token_id=0 eos_token_id=0, what "
                        "--world-tokenizer sets unless --set says otherwise)")
    p.add_argument("--world-tokenizer", action="store_true",
                   help="save the RWKV World tokenizer with the model (built from the installed rwkv package)")

    def run(args: argparse.Namespace) -> int:
        import seqzoo  # noqa: F401
        from seqzoo.conversions.checkpoints import check_destination
        from seqzoo.conversions.rwkv7 import convert_rwkv7
        from seqzoo.utils import parse_overrides

        overrides = parse_overrides(args.set, "--set")
        check_destination(args.source, args.destination)
        tokenizer = _world_tokenizer(args)
        if tokenizer is not None:  # the config's special ids are the saved tokenizer's unless --set says otherwise
            for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
                overrides.setdefault(name, getattr(tokenizer, name))
        model = convert_rwkv7(args.source, _dtype(args), **overrides)
        return _report(args, model, _save_world_tokenizer(args, model, tokenizer))

    p.set_defaults(func=run)


def add_fla_rwkv7(sources: Any) -> None:
    p = sources.add_parser("fla-rwkv7", help="flash-linear-attention RWKV7ForCausalLM folder -> seqzoo RWKV-7")
    _common(p, "folder saved by fla's RWKV7ForCausalLM (config.json with model_type rwkv7)")
    p.add_argument("--world-tokenizer", action="store_true",
                   help="save seqzoo's RWKV World tokenizer instead of copying the folder's tokenizer files")

    def run(args: argparse.Namespace) -> int:
        import seqzoo  # noqa: F401
        from seqzoo.conversions.checkpoints import check_destination
        from seqzoo.conversions.fla_rwkv7 import (
            convert_fla_rwkv7,
            convert_fla_rwkv7_folder,
        )

        if args.world_tokenizer:  # (the folder's own tokenizer files are not copied)
            check_destination(args.source, args.destination, copies_tokenizer=False)
            tokenizer = _world_tokenizer(args)
            model = convert_fla_rwkv7(args.source, dtype=_dtype(args))
            note = _take_world_token_ids(model, tokenizer)
            return _report(args, model, _save_world_tokenizer(args, model, tokenizer) + note)
        model = convert_fla_rwkv7_folder(args.source, args.destination, dtype=_dtype(args))
        return _report(args, model)

    p.set_defaults(func=run)


def add_word_lm(sources: Any) -> None:
    p = sources.add_parser("word-lm", help="PyTorch word-language-model nn.RNN / nn.LSTM / nn.GRU state dict -> "
                                           "seqzoo RNN / LSTM / GRU")
    _common(p, ".pt file of torch.save(model.state_dict(), f) (encoder.weight, rnn.weight_ih_l0 ..., decoder.*)")
    p.add_argument("--nonlinearity", choices=["tanh", "relu"], default=None,
                   help="the nonlinearity of an nn.RNN (its state dict does not record it; required for one)")
    p.add_argument("--key-map", nargs="+", action="extend", default=[], metavar="THEIRS=OURS",
                   help="rename modules or keys onto the example's names, e.g. embedding=encoder lstm=rnn fc=decoder")
    p.add_argument("--vocab", default=None, metavar="FILE",
                   help="the vocabulary, one word per line in id order; saves a word-level tokenizer with the model")
    p.add_argument("--hidden", default=None, metavar="FILE",
                   help="a hidden state saved with torch.save(hidden, f); written as hidden_state.safetensors")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="dropout, pad/bos/eos_token_id")

    def run(args: argparse.Namespace) -> int:
        import seqzoo  # noqa: F401
        from seqzoo.conversions.word_lm import convert_word_lm_file
        from seqzoo.utils import parse_overrides

        key_map = {}
        for item in args.key_map:
            theirs, sep, ours = item.partition("=")
            if not sep or not theirs or not ours:
                raise ValueError(f"--key-map entry {item!r} is not of the form THEIRS=OURS")
            if theirs in key_map:
                raise ValueError(f"--key-map renames {theirs!r} twice ({theirs}={key_map[theirs]}, {item}); give "
                                 "each name once")
            key_map[theirs] = ours
        model = convert_word_lm_file(args.source, args.destination, nonlinearity=args.nonlinearity, key_map=key_map,
                                     vocabulary=args.vocab, hidden=args.hidden, dtype=_dtype(args),
                                     **parse_overrides(args.set, "--set"))
        extra = "" if args.vocab else "; no vocabulary given, so no tokenizer: the model works on token ids"
        return _report(args, model, extra)

    p.set_defaults(func=run)


SOURCES: list[Callable[[Any], None]] = [add_hf_mamba, add_llama, add_gpt2, add_mamba_ssm, add_rwkv7, add_fla_rwkv7,
                                        add_word_lm]


def cmd_export(args: argparse.Namespace) -> int:
    import seqzoo  # noqa: F401
    from seqzoo.conversions.export import export_native

    native = export_native(args.source, args.destination, args.to)
    print(f"exported {args.source} -> {args.destination} ({type(native).__name__}; loads with transformers alone)")
    return 0


def _without_bars(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``command`` without transformers' progress bars ("Loading weights", "Writing model shards": for one model
    they are noise above the command's own line)."""
    def run(args: argparse.Namespace) -> int:
        from seqzoo.utils import quiet_transformers

        with quiet_transformers(bars_only=True):
            return command(args)
    return run


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("convert", help="convert a peer checkpoint into a seqzoo model")
    sources = parser.add_subparsers(dest="source_format", required=True, metavar="SOURCE")
    for add_source in SOURCES:
        add_source(sources)
    for source in sources.choices.values():
        source.set_defaults(func=_without_bars(source.get_default("func")))
    p = subparsers.add_parser("export", help="export a seqzoo model as transformers' own Llama / GPT-2 / Mamba / "
                                             "Mamba-2 model (no custom code)")
    p.add_argument("--to", required=True, choices=["llama", "gpt2", "mamba", "mamba2"], help="the target format")
    p.add_argument("source", help="seqzoo model folder")
    p.add_argument("destination", help="folder to write the transformers model to")
    p.set_defaults(func=_without_bars(cmd_export))
