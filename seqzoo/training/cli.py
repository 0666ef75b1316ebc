r"""seqzoo train <recipe.yaml | recipe preset | model preset> [key=value ...] [--resume [PATH]]

Trains what the recipe describes and saves the model with its tokenizer in the output folder. One process:
`seqzoo train lstm-pydoc`. Several (DDP, or FSDP2 on GPUs or CPU):

    accelerate launch --multi_gpu --num_processes 2 -m seqzoo train lstm-pydoc
    torchrun --nproc_per_node 2 -m seqzoo train lstm-pydoc
    accelerate launch --use_fsdp --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \
        --num_processes 2 -m seqzoo train transformer-pydoc

Checkpoints go to OUTPUT_DIR/checkpoints every train.save_every steps (default 100); --resume continues from the
newest one. Ctrl-C stops the run; the newest checkpoint stays complete.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train", help="train a model from a recipe (YAML file, recipe preset or model preset) with Accelerate",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="a recipe YAML file, a recipe preset that ships with seqzoo (e.g. lstm-pydoc; "
                   "--print-recipe shows it whole) or a model preset")
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",  # (default: not listed as required)
                   help="recipe overrides: train.max_steps=100, lr=1e-3, model.config.dropout=0.1, ...")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="PATH",
                   help="continue from the newest checkpoint in output_dir, or from PATH (a run or checkpoint folder)")
    p.add_argument("--output-dir", default=None, help="where checkpoints, metrics and the final model go (a fresh run "
                   "needs it empty or new)")
    p.add_argument("--force", action="store_true",
                   help="start over in the output folder of an earlier run, deleting what it holds once the new run "
                   "has done its first step (a folder that holds no run is refused)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or log lines")
    p.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from seqzoo.outputs import describe
    from seqzoo.training.building import check_recipe
    from seqzoo.training.launch import leave_process_group
    from seqzoo.training.recipe_loading import load_recipe
    from seqzoo.training.state import NonFiniteError
    from seqzoo.training.trainer import train
    from seqzoo.utils import parse_overrides

    if args.resume and args.force:  # (train() reads force only for a fresh run: --force would be ignored)
        raise ValueError("--resume and --force contradict each other: --resume continues the run in the output "
                         "folder, --force deletes what it holds to start over; give one of them")
    overrides = parse_overrides(args.overrides)
    if args.output_dir is not None:
        # (an empty --output-dir, an unset shell variable, was dropped and the run went to the recipe's folder)
        if not args.output_dir.strip():
            raise ValueError("--output-dir is empty: give the folder for checkpoints, metrics and the final model, "
                             "or leave the option out for the recipe's output_dir")
        if "output_dir" in overrides:
            raise ValueError(f"--output-dir {args.output_dir!r} and the override output_dir="
                             f"{overrides['output_dir']!r} both set the output folder; give it once")
        overrides["output_dir"] = args.output_dir
    recipe = load_recipe(args.recipe, overrides)
    if args.force:
        _refuse_deleting_the_recipe(args.recipe, recipe.output_dir)
    if args.print_recipe:
        check_recipe(recipe)  # (what train would refuse before reading data)
        print(recipe.to_yaml(), end="")
        return 0
    failed = True
    try:
        result = train(recipe, resume=args.resume, progress=not args.no_progress, force=args.force)
        failed = False
    except (NonFiniteError, OSError) as err:  # a diverged run, a read-only folder, a full disk: one line each
        raise ValueError(describe(err) if isinstance(err, OSError) else str(err)) from err
    finally:
        leave_process_group(failed=failed)  # (this process ends with the run; see leave_process_group)
    if result.is_main_process:
        perplexity = f", perplexity {result.eval['perplexity']:.3f}" if "perplexity" in result.eval else ""
        print(f"trained {recipe.model.source} for {result.steps} steps ({result.tokens_seen:,} tokens, task "
              f"{recipe.task}): eval loss {result.eval['loss']:.4f}{perplexity}, accuracy "
              f"{result.eval['accuracy']:.3f}; saved to {result.output_dir}")
    return 0


def _refuse_deleting_the_recipe(given: str, output_dir: str) -> None:
    """--force deletes the output folder's run once the new one has done its first step: refuse it where that folder
    holds the recipe file given (it was deleted with the run). The run's own ``recipe.yaml`` is no loss: the new run
    writes it again, from the recipe read from it."""
    import os
    from pathlib import Path

    from seqzoo.outputs import is_within

    recipe_file, own = Path(given), Path(output_dir) / "recipe.yaml"
    if (recipe_file.is_file() and is_within(recipe_file.resolve().parent, output_dir)
            and not (own.is_file() and os.path.samefile(recipe_file, own))):
        raise ValueError(f"--force would delete {output_dir!r}, which holds the recipe file given, {given!r}; move the "
                         "recipe out of it, or choose another output_dir (--output-dir)")
