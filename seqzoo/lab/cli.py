"""``seqzoo lab`` (train, measure, report) and ``seqzoo lab gradients`` (gradient reach at initialisation)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "lab", help="train tiny models of every architecture on memory tasks and text; write a report",
        description="How does each architecture remember, at what cost? Trains a tiny model of every registered "
                    "architecture on copy / selective copy / associative recall / induction at growing distances "
                    "and on byte-level text, times decoding, measures gradients, and writes report.md + plots.")
    p.add_argument("--out", default="lab-report", help="report folder (default: lab-report)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run of every code path (for CI)")
    _common(p)
    p.add_argument("--tasks", nargs="+", help="memory tasks (default: all)")
    p.add_argument("--distances", nargs="+", type=int, help="distances in tokens (default: 4 16 64)")
    p.add_argument("--steps", type=int, help="training steps per memory-task model (default: 250)")
    p.add_argument("--text-steps", type=int, help="training steps per text model (default: 250)")
    p.add_argument("--lr", type=float, help="learning rate of every run (default: 3e-3)")
    p.add_argument("--workers", type=int, help="parallel single-threaded training processes (default: one per core)")
    p.set_defaults(func=cmd_lab)

    sub = p.add_subparsers(dest="lab_command")
    g = sub.add_parser("gradients", help="‖d loss(last) / d input(t)‖ against distance, for every architecture")
    g.add_argument("--out", default="lab-gradients", help="folder for gradients.md and gradients.png")
    g.add_argument("--length", type=int, default=256, help="sequence length in tokens (default: 256)")
    _common(g)
    g.set_defaults(func=cmd_gradients)

    s = sub.add_parser("seq2seq", help="encoder-decoders with and without attention on growing sources: the "
                       "bottleneck, with attention heat maps (about 90 s on two cores; --larger for more)")
    s.add_argument("--out", default="lab-seq2seq", help="report folder (default: lab-seq2seq)")
    s.add_argument("--larger", action="store_true", help="all four tasks, longer sources, 3x the steps")
    s.add_argument("--smoke", action="store_true", help="a seconds-long run of every code path (for CI)")
    s.add_argument("--tasks", nargs="+", help="reverse copy sort digits dates (default: reverse digits)")
    s.add_argument("--steps", type=int, help="training steps per model (default: 200)")
    s.add_argument("--workers", type=int, help="parallel single-threaded training processes")
    s.add_argument("--seed", type=int, default=None, help="seed (default: 0)")
    s.set_defaults(func=cmd_seq2seq)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--architectures", nargs="+", help="architectures to include (default: every registered one)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: 0)")


def cmd_lab(args: argparse.Namespace) -> int:
    from seqzoo.lab.runner import LabConfig, run_lab

    chosen = {"architectures": args.architectures, "tasks": args.tasks, "distances": args.distances,
              "task_steps": args.steps, "text_steps": args.text_steps, "workers": args.workers, "seed": args.seed,
              "lr": args.lr}
    chosen = {k: v for k, v in chosen.items() if v is not None}
    cfg = LabConfig.smoke(**chosen) if args.smoke else LabConfig(**chosen)
    results = run_lab(cfg, args.out)
    return 1 if any(not run["ok"] for run in results["runs"]) else 0


def cmd_gradients(args: argparse.Namespace) -> int:
    import torch

    import seqzoo
    from seqzoo.lab import plots
    from seqzoo.lab.gradients import gradient_profile, table_rows
    from seqzoo.lab.report import markdown_table
    from seqzoo.lab.runner import lab_presets

    if args.length < 2:
        raise ValueError(f"--length={args.length} is invalid: must be >= 2")
    seed = args.seed or 0
    profiles = {}
    for arch, preset in lab_presets(args.architectures).items():
        torch.manual_seed(seed)
        profiles[arch] = gradient_profile(seqzoo.create_model(preset), args.length, seed=seed)
    header, rows = table_rows(profiles)
    table = markdown_table(header, rows)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = (f"# Gradient reach at initialisation\n\n‖∂ loss(last position) / ∂ input embedding(t)‖ over "
            f"{args.length} random bytes, seed {seed}, relative to distance 0.\n\n")
    if plots.matplotlib_available():
        plots.gradient_plot({"at initialisation": profiles}, out / "gradients.png")
        text += "![gradient norm against distance](gradients.png)\n\n"
        print(f"wrote {out / 'gradients.png'}")
    (out / "gradients.md").write_text(text + table + "\n")
    print(f"wrote {out / 'gradients.md'}")
    return 0


def cmd_seq2seq(args: argparse.Namespace) -> int:
    from seqzoo.lab.seq2seq import Seq2SeqLabConfig, run_seq2seq_lab

    chosen = {k: v for k, v in {"tasks": args.tasks, "steps": args.steps, "workers": args.workers,
                                "seed": args.seed}.items() if v is not None}
    if args.larger and args.smoke:
        raise ValueError("--larger and --smoke are opposites; pass one")
    make = Seq2SeqLabConfig.larger if args.larger else Seq2SeqLabConfig.smoke if args.smoke else Seq2SeqLabConfig
    results = run_seq2seq_lab(make(**chosen), args.out)
    return 1 if any(not run["ok"] for run in results["runs"]) else 0
