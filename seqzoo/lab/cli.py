"""``seqzoo lab`` (train, measure, report), ``seqzoo lab gradients`` (gradient reach at initialisation) and
``seqzoo lab sweep`` (the learning-rate sweep behind the lab's recipes)."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from seqzoo.utils import bounded_int, training_seed

# The options' values are checked here, by argparse, so that a bad one is named as typed (`--steps`), not by the
# setting it fills (LabConfig.task_steps, whose own check names the field for the Python API).
# --workers: a count of processes, 0 for one per available core.
worker_count = bounded_int(0, None, "a number of processes >= 1, or 0 for one per core")
step_count = bounded_int(1, None, "a number of training steps >= 1")
memory_distance = bounded_int(1, None, "a distance in tokens >= 1")
words_per_text = bounded_int(2, None, "a number of words >= 2")
gradient_length = bounded_int(2, None, "a sequence length >= 2 tokens")


def folder_name(text: str) -> str:
    """An argparse type for --out: a folder's name. An empty one (an unset shell variable, ``--out "$DIR"``) is
    refused: ``Path("")`` is the current folder, where `seqzoo lab gradients` wrote, and the labs whose default
    folder an empty value fell back to (``args.out or "lab-report"``) wrote there without a word. ``.`` names the
    current folder on purpose and is taken."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is an empty name: give the folder to write to ('.' for the "
                                         "current one), or leave the option out for its default")
    return text


def learning_rate(text: str) -> float:
    """An argparse type: a learning rate in (0, 1) (nan and inf are not)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:  # (False for nan)
        raise argparse.ArgumentTypeError(f"{text} is out of range: a learning rate in (0, 1)")
    return value


class Distinct(argparse.Action):
    """A list option whose values must differ (--distances, --seeds, --tasks, --rates): each value names runs, or a
    column of the report, so a repeat is a mistake (which the lab's settings refused naming their own fields). The
    option given twice adds to its list (``--distances 4 --distances 8`` is ``--distances 4 8``), as every list
    option of the command line does: the second replaced the first."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        before = getattr(namespace, self.dest, None)
        values = [*(() if before is None or before is self.default else before), *values]
        repeated = [value for i, value in enumerate(values) if value in values[:i]]
        if repeated:
            raise argparse.ArgumentError(self, f"{' '.join(map(str, dict.fromkeys(repeated)))} given more than "
                                               "once: give each value once")
        setattr(namespace, self.dest, values)


SEQ2SEQ_LAB_TASKS = ("reverse", "copy", "sort", "digits")  # the seq2seq tasks whose sources grow
# The memory tasks, by name (seqzoo.training.data.TASKS, which a test keeps equal). Spelled out here so that the
# parser, and `seqzoo lab --help`, need no torch.
TASK_NAMES = ("copy", "selective_copy", "associative_recall", "induction")
BIDIRECTIONAL_TASKS = ("appears_later", "first_letter")  # seqzoo.lab.bidirectional.TASKS (a test keeps them equal)
WORKERS_HELP = "parallel single-threaded training processes (default: one per core, at most 8)"
ARCHITECTURES_HELP = ("architectures to include (default: every registered one; the names in the architecture column "
                      "of `seqzoo list`: rnn lstm gru transformer rwkv7 mamba mamba2 hybrid, and any plugin's)")

DESCRIPTION = """\
How does each architecture remember, and at what cost? Trains a tiny model of every registered architecture on
copy, selective copy, associative recall and induction at growing distances (three seeds each) and on byte-level
text, times decoding, weighs the state, measures gradients, and writes report.md with plots. About 10 minutes on a
2-core CPU machine. Each architecture trains with its own learning rate from the lab's recipes
(seqzoo/lab/recipes.py, meant to come from `seqzoo lab sweep`; until that has run, every rate is the same 3e-3).

A folder that already holds a finished report is never replaced unless --force is given. Every training run is
recorded in its results.json as it ends: a lab stopped before its report (Ctrl-C, an error while measuring) keeps
its finished runs, and --resume, with the options it ran with, trains only the rest."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "lab", help="train tiny models of every architecture on memory tasks and text; write a report",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, type=folder_name,
                   help="report folder (default: lab-report, or lab-report-smoke with --smoke)")
    p.add_argument("--force", action="store_true", help="replace the report already in --out")
    p.add_argument("--resume", action="store_true",
                   help="finish the lab that stopped (Ctrl-C, an error) in --out: keep the training runs it recorded "
                        "and train only the rest; give the options it ran with")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run of every code path (for CI); its "
                   "figures mean nothing")
    p.add_argument("--architectures", nargs="+", action="extend", metavar="ARCH", help=ARCHITECTURES_HELP)
    p.add_argument("--tasks", nargs="+", choices=TASK_NAMES, metavar="TASK", action=Distinct,
                   help=f"memory tasks (default: all: {' '.join(TASK_NAMES)})")
    p.add_argument("--distances", nargs="+", type=memory_distance, metavar="D", action=Distinct,
                   help="distances in tokens between what is stored and when it is asked for (default: 4 16 64)")
    p.add_argument("--seeds", nargs="+", type=training_seed, metavar="SEED", action=Distinct,
                   help="seeds of the memory-task models; the spread across them is reported (default: 0 1 2)")
    p.add_argument("--steps", type=step_count,
                   help="training steps of every memory-task model (default: per task, from the lab's recipes)")
    p.add_argument("--text-steps", type=step_count,
                   help="training steps of every text model (default: from the recipes)")
    p.add_argument("--lr", type=learning_rate,
                   help="one learning rate for every run (default: each architecture's rate from the recipes)")
    p.add_argument("--workers", type=worker_count, help=WORKERS_HELP)
    p.set_defaults(func=cmd_lab)

    sub = p.add_subparsers(dest="lab_command", metavar="[gradients | seq2seq | bidirectional | sweep]",
                           description="or, instead of the whole lab:")
    g = sub.add_parser("gradients", help="norm of d loss(last) / d input(t) against distance, for every "
                       "architecture",
                       description="How far back does the gradient reach at initialisation? Seconds of work.")
    g.add_argument("--out", default="lab-gradients", type=folder_name,
                   help="folder for gradients.md and gradients.png (default: lab-gradients)")
    g.add_argument("--length", type=gradient_length, default=256, help="sequence length in tokens (default: 256)")
    g.add_argument("--architectures", nargs="+", action="extend", metavar="ARCH", help=ARCHITECTURES_HELP)
    g.add_argument("--seed", type=training_seed, default=0, help="seed of the model and the input (default: 0)")
    g.add_argument("--force", action="store_true", help="replace gradients.md / gradients.png already in --out")
    g.set_defaults(func=cmd_gradients)

    s = sub.add_parser("seq2seq", help="encoder-decoders with and without attention on growing sources: the "
                       "bottleneck, with attention heat maps (under 200 CPU-seconds: under two minutes on two idle "
                       "cores; --larger for more)")
    s.add_argument("--out", type=folder_name,
                   help="report folder (default: lab-seq2seq, or lab-seq2seq-smoke with --smoke)")
    s.add_argument("--force", action="store_true", help="replace the seq2seq report already in --out")
    s.add_argument("--larger", action="store_true", help="all four tasks, longer sources, 3x the steps")
    s.add_argument("--smoke", action="store_true", help="a seconds-long run of every code path (for CI)")
    s.add_argument("--tasks", nargs="+", choices=SEQ2SEQ_LAB_TASKS, metavar="TASK", action=Distinct,
                   help=f"{' '.join(SEQ2SEQ_LAB_TASKS)} (default: reverse digits; a task of growing sources: the "
                        "fixed-length 'dates' task of seqzoo train has no source length to grow)")
    s.add_argument("--steps", type=step_count, help="training steps per model (default: 200)")
    s.add_argument("--workers", type=worker_count, help=WORKERS_HELP)
    s.add_argument("--seed", type=training_seed, default=None, help="seed (default: 0)")
    s.set_defaults(func=cmd_seq2seq)

    b = sub.add_parser("bidirectional", help="left to right against bidirectional encoders on tagging and "
                       "classification at growing distances (about 2.5 minutes on two cores)",
                       description="Why reading both ways matters: every architecture that can be bidirectional "
                                   "(RNN, LSTM, GRU, Mamba, Mamba-2, RWKV-7) trained left to right and bidirectional "
                                   "on a tag that depends on what follows each word and a label that sits at the "
                                   "start of the text. Writes bidirectional.md, bidirectional.png and "
                                   "bidirectional-results.json. Not part of the default `seqzoo lab` run.")
    b.add_argument("--out", type=folder_name,
                   help="report folder (default: lab-bidirectional, or lab-bidirectional-smoke with --smoke)")
    b.add_argument("--force", action="store_true", help="replace the bidirectional report already in --out")
    b.add_argument("--smoke", action="store_true", help="a seconds-long run of every code path (for CI)")
    b.add_argument("--architectures", nargs="+", action="extend", metavar="ARCH",
                   help="architectures (default: every one that can be bidirectional: rnn lstm gru mamba mamba2 rwkv7)")
    b.add_argument("--tasks", nargs="+", choices=BIDIRECTIONAL_TASKS, metavar="TASK", action=Distinct,
                   help=f"tasks (default: both: {' '.join(BIDIRECTIONAL_TASKS)})")
    b.add_argument("--distances", nargs="+", type=words_per_text, metavar="WORDS", action=Distinct,
                   help="words per text (default: 8 16 32)")
    b.add_argument("--steps", type=step_count, help="training steps per model (default: 150)")
    b.add_argument("--workers", type=worker_count, help=WORKERS_HELP)
    b.add_argument("--seed", type=training_seed, default=None, help="seed (default: 0)")
    b.set_defaults(func=cmd_bidirectional)

    s = sub.add_parser("sweep", help="the learning-rate sweep behind the lab's recipes (about an hour on 2 cores)",
                       description="Train every architecture at each learning rate on every memory task (on all "
                                   "the lab's distances at once, as the lab trains) and on text, one seed, and print "
                                   "the rates to keep in seqzoo/lab/recipes.py. Writes sweep.md and results.json.")
    s.add_argument("--out", default="lab-sweep", type=folder_name,
                   help="folder for sweep.md and results.json (default: lab-sweep)")
    s.add_argument("--force", action="store_true", help="replace the sweep already in --out")
    s.add_argument("--architectures", nargs="+", action="extend", metavar="ARCH", help=ARCHITECTURES_HELP)
    s.add_argument("--rates", nargs="+", type=learning_rate, metavar="LR", action=Distinct,
                   help="learning rates (default: 3e-3 1e-2 3e-2)")
    s.add_argument("--workers", type=worker_count, help=WORKERS_HELP)
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where the runs train (default: cpu; rates found on cuda carry over: same models, same data)")
    s.add_argument("--deadline-minutes", type=float, default=0.0,
                   help="stop queueing runs after this long and report what ran (default: no deadline)")
    s.set_defaults(func=cmd_sweep)
    for name, parser in sub.choices.items():  # (what refuse_options_before_subcommand may suggest moving)
        SUBCOMMAND_OPTIONS[name] = {o for action in parser._actions for o in action.option_strings}


SUBCOMMAND_OPTIONS: dict[str, set[str]] = {}  # sub-command -> its option strings (filled by register)


def refuse_options_before_subcommand(args: argparse.Namespace) -> None:
    """``seqzoo lab --out X gradients``: argparse hands ``--out X`` to ``seqzoo lab``, and the sub-command's own
    defaults then replace it -- the option would be dropped without a word (``--smoke seq2seq`` ran the full lab)."""
    argv = list(getattr(args, "argv", None) or [])
    if "lab" in argv and args.lab_command in argv[argv.index("lab"):]:
        before = argv[argv.index("lab") + 1:argv.index(args.lab_command, argv.index("lab"))]
        known = SUBCOMMAND_OPTIONS.get(args.lab_command)
        foreign = [o.split("=")[0] for o in before if o.startswith("-") and known is not None
                   and o.split("=")[0] not in known]
        if foreign:
            raise ValueError(f"{' '.join(before)} comes before `{args.lab_command}`, where it would be ignored, and "
                             f"`seqzoo lab {args.lab_command}` has no {', '.join(foreign)} (see `seqzoo lab "
                             f"{args.lab_command} --help`)")
        if before:
            raise ValueError(f"{' '.join(before)} comes before `{args.lab_command}`, where it would be ignored: "
                             f"write `seqzoo lab {args.lab_command} {' '.join(before)} ...` (see `seqzoo lab "
                             f"{args.lab_command} --help`)")


def command_line(args: argparse.Namespace) -> str:
    return "seqzoo " + shlex.join(getattr(args, "argv", None) or ["lab"])


def cmd_lab(args: argparse.Namespace) -> int:
    from seqzoo.lab.runner import LabConfig, run_lab

    chosen = {"architectures": args.architectures, "tasks": args.tasks, "distances": args.distances,
              "seeds": args.seeds, "task_steps": args.steps, "text_steps": args.text_steps, "lr": args.lr,
              "workers": args.workers}
    chosen = {k: v for k, v in chosen.items() if v is not None}
    cfg = LabConfig.smoke(**chosen) if args.smoke else LabConfig(**chosen)
    out = args.out or ("lab-report-smoke" if args.smoke else "lab-report")
    results = run_lab(cfg, out, command=command_line(args), force=args.force, resume=args.resume)
    return 1 if any(not run["ok"] for run in results["runs"]) else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    refuse_options_before_subcommand(args)
    from seqzoo.lab.sweep import SweepConfig, run_sweep

    chosen = {"architectures": args.architectures, "rates": args.rates, "workers": args.workers,
              "device": args.device, "deadline_seconds": 60 * args.deadline_minutes}
    cfg = SweepConfig(**{k: v for k, v in chosen.items() if v is not None})
    results = run_sweep(cfg, args.out, command=command_line(args), force=args.force)
    return 1 if any(not run["ok"] for run in results["runs"]) else 0  # (as the other labs: a failed run fails)


def cmd_gradients(args: argparse.Namespace) -> int:
    refuse_options_before_subcommand(args)
    import torch

    import seqzoo
    from seqzoo.lab import plots
    from seqzoo.lab.folders import check_out_folder, lab_folder, refuse_folders_named_as
    from seqzoo.lab.gradients import gradient_profile, identity_notes, table_rows
    from seqzoo.lab.report import markdown_table
    from seqzoo.lab.runner import lab_presets

    out = lab_folder(args.out)  # (as the other labs read it)
    check_out_folder(out)
    refuse_folders_named_as(out, ("gradients.md", "gradients.png"), "gradients")
    held = [name for name in ("gradients.md", "gradients.png") if (out / name).exists() or (out / name).is_symlink()]
    if held and not args.force:  # (as the other labs keep a report: never replaced without --force)
        raise ValueError(f"{str(out)!r} already holds {' and '.join(held)}; pass --out NEW_FOLDER to keep them, or "
                         "--force to replace them")
    profiles = {}
    for arch, preset in lab_presets(args.architectures).items():
        torch.manual_seed(args.seed)
        profiles[arch] = gradient_profile(seqzoo.create_model(preset), args.length, seed=args.seed)
    header, rows = table_rows(profiles)
    table = markdown_table(header, rows)
    notes = identity_notes(profiles)
    table += "".join(f"\n{note}" for note in notes)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    for name in held:  # (replaced, never written through a link of that name to a file elsewhere)
        (out / name).unlink()
    text = (f"# Gradient reach at initialisation\n\n‖∂ loss(last position) / ∂ input embedding(t)‖ over "
            f"{args.length} random bytes, seed {args.seed}, relative to distance 0.\n\n")
    if plots.matplotlib_available():
        plots.gradient_plot({"at initialisation": profiles}, out / "gradients.png")
        text += "![gradient norm against distance](gradients.png)\n\n"
        print(f"wrote {out / 'gradients.png'}")
    else:  # (gradients.png, which --out's help promises, was left out without a word)
        text += f"> {plots.SKIPPED}\n\n"
        print(plots.SKIPPED)
    (out / "gradients.md").write_text(text + table + "\n", encoding="utf-8")
    print(f"wrote {out / 'gradients.md'}")
    return 0


def cmd_seq2seq(args: argparse.Namespace) -> int:
    refuse_options_before_subcommand(args)
    from seqzoo.lab.seq2seq import Seq2SeqLabConfig, run_seq2seq_lab

    chosen = {k: v for k, v in {"tasks": args.tasks, "steps": args.steps, "workers": args.workers,
                                "seed": args.seed}.items() if v is not None}
    if args.larger and args.smoke:
        raise ValueError("--larger and --smoke are opposites; pass one")
    make = Seq2SeqLabConfig.larger if args.larger else Seq2SeqLabConfig.smoke if args.smoke else Seq2SeqLabConfig
    out = args.out or ("lab-seq2seq-smoke" if args.smoke else "lab-seq2seq")  # (a smoke run: its own folder)
    results = run_seq2seq_lab(make(**chosen), out, force=args.force)
    return 1 if any(not run["ok"] for run in results["runs"]) else 0


def cmd_bidirectional(args: argparse.Namespace) -> int:
    refuse_options_before_subcommand(args)
    from seqzoo.lab.bidirectional import BidirectionalLabConfig, run_bidirectional_lab

    chosen = {k: v for k, v in {"architectures": args.architectures, "tasks": args.tasks, "distances": args.distances,
                                "steps": args.steps, "workers": args.workers, "seed": args.seed}.items()
              if v is not None}
    cfg = BidirectionalLabConfig.smoke(**chosen) if args.smoke else BidirectionalLabConfig(**chosen)
    out = args.out or ("lab-bidirectional-smoke" if args.smoke else "lab-bidirectional")  # (as `seqzoo lab --smoke`)
    results = run_bidirectional_lab(cfg, out, command=command_line(args), force=args.force)
    return 1 if any(not run["ok"] for run in results["runs"]) else 0
