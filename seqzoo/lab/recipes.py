"""The lab's training recipes: how long, and how fast, each architecture trains on each kind of job.

The model presets stay what they are (a ``-tiny`` config per architecture); what the lab varies is the training.
Every architecture gets its own learning rate, from ``seqzoo lab sweep`` (see SWEEP below): one rate for all
architectures would measure which architecture happens to suit that rate, not which remembers. Steps are per task:
a task that needs more steps to be learnt at all gets them, for every architecture alike.
"""

from __future__ import annotations

TEXT = "text"  # the job that trains on text, beside the memory tasks (a task name of its own)
SOLVED_ACCURACY, SOLVED_WINDOW = 0.99, 20  # a memory-task run stops once its training accuracy holds this

# Steps per memory-task model (batch 16). Copy and induction are learnt (or not) within 250 steps by every
# architecture at its swept rate; selective copy and associative recall need more to be learnt at all.
TASK_STEPS = {"copy": 250, "selective_copy": 400, "associative_recall": 400, "induction": 250}
TEXT_STEPS = 250
DEFAULT_TASK_STEPS = 250  # a task added later, until the sweep has seen it

# architecture -> learning rate for the memory tasks and for text (AdamW, warmup + cosine decay).
LEARNING_RATES: dict[str, dict[str, float]] = {
    "rnn": {"memory": 3e-3, "text": 3e-3},
    "lstm": {"memory": 3e-3, "text": 3e-3},
    "gru": {"memory": 3e-3, "text": 3e-3},
    "transformer": {"memory": 3e-3, "text": 3e-3},
    "rwkv7": {"memory": 3e-3, "text": 3e-3},
    "mamba": {"memory": 3e-3, "text": 3e-3},
    "mamba2": {"memory": 3e-3, "text": 3e-3},
    "hybrid": {"memory": 3e-3, "text": 3e-3},
}
DEFAULT_LR = 3e-3  # an architecture the sweep has not seen (a plugin): the rate every run had before the sweep

SWEEP = "not run yet"


def rates_source() -> str:
    """Where the rates come from, for the report: the sweep that chose them, or the plain truth that none has."""
    if SWEEP == "not run yet":
        return (f"`seqzoo/lab/recipes.py`; `seqzoo lab sweep` has not been run for them yet, so every architecture "
                f"trains at the same default rate ({DEFAULT_LR:g})")
    return f"`seqzoo lab sweep` ({SWEEP}), kept in `seqzoo/lab/recipes.py`"


def learning_rate(architecture: str, kind: str) -> float:
    """The recipe's rate for ``kind`` ("memory" or "text") jobs of ``architecture``."""
    return LEARNING_RATES.get(architecture, {}).get(kind, DEFAULT_LR)


def task_steps(task: str) -> int:
    return TASK_STEPS.get(task, DEFAULT_TASK_STEPS)
