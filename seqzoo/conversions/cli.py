"""``seqzoo convert <source> <src> <dst>``: one sub-command per converter.

To add a source, write an ``add_<source>(sources)`` function that adds its parser (with ``func`` set) and append it
to ``SOURCES``.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable


def add_hf_mamba(sources: Any) -> None:
    p = sources.add_parser(
        "hf-mamba",
        help="transformers MambaForCausalLM / Mamba2ForCausalLM (folder or Hub id) -> seqzoo Mamba / Mamba-2",
    )
    p.add_argument("source", help="folder saved by save_pretrained, or a Hub repo id")
    p.add_argument("destination", help="folder to write the seqzoo model to")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="dtype of the converted weights (default: the source's)")
    p.set_defaults(func=cmd_hf_mamba)


def cmd_hf_mamba(args: argparse.Namespace) -> int:
    import torch

    import seqzoo  # noqa: F401  (registers the architectures)
    from seqzoo.conversions.hf_mamba import convert_hf_mamba_folder

    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = convert_hf_mamba_folder(args.source, args.destination, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    print(f"converted {args.source} -> {args.destination} ({type(model).__name__}, {params:,} parameters)")
    return 0


def add_rwkv7(sources: Any) -> None:
    p = sources.add_parser("rwkv7", help="RWKV-LM RWKV-7 'x070' .pth checkpoint -> seqzoo RWKV-7")
    p.add_argument("source", help=".pth state dict saved by RWKV-LM (RWKV-7 x070)")
    p.add_argument("destination", help="folder to write the seqzoo model to")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="dtype of the converted weights (default: the checkpoint's)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config fields the checkpoint does not fix: pad/bos/eos_token_id, layer_norm_eps, "
                        "group_norm_eps (RWKV World models use bos_token_id=0 eos_token_id=0)")
    p.set_defaults(func=cmd_rwkv7)


def cmd_rwkv7(args: argparse.Namespace) -> int:
    import torch

    import seqzoo  # noqa: F401  (registers the architectures)
    from seqzoo.cli import parse_overrides
    from seqzoo.conversions.rwkv7 import convert_rwkv7_file

    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = convert_rwkv7_file(args.source, args.destination, dtype=dtype, **parse_overrides(args.set))
    params = sum(p.numel() for p in model.parameters())
    print(f"converted {args.source} -> {args.destination} ({type(model).__name__}, {params:,} parameters)")
    return 0


SOURCES: list[Callable[[Any], None]] = [add_hf_mamba, add_rwkv7]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("convert", help="convert a peer checkpoint into a seqzoo model")
    sources = parser.add_subparsers(dest="source_format", required=True, metavar="SOURCE")
    for add_source in SOURCES:
        add_source(sources)
