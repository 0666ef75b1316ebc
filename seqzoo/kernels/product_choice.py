"""Who multiplies a decode step's few rows (one per sequence) by a weight stored by rows on the CPU: torch's own
product (``F.linear``, which runs MKL's) or seqzoo's (oneDNN's product in an eager step,
``seqzoo/kernels/onednn_linear.py``; for one row in a compiled step, inductor's own reduction loops,
``seqzoo/kernels/one_row_products.py``).

Which is faster depends on the processor MKL runs on, and on the rows. MKL is Intel's library and takes its tuned code
on Intel's processors only. On the two-core AMD EPYC host of BENCHMARKS.md's runs T-AJ, MKL streamed a weight stored
by rows at 11-17 GB/s, and seqzoo's products were faster: oneDNN's 1.15-1.5x for matrices of half a million elements
and more, inductor's loops 1.1-1.6x a compiled step. On the two-core Intel Xeon host of run AK, MKL's was the faster
for one to three rows (oneDNN's 0.68-0.98x of it from 768 x 768 to the 65536 x 768 head; inductor's loops 0.86-0.98x
of plain inductor in RWKV-7's compiled step), and oneDNN's for four to sixteen (1.0-2.1x: MKL's product of four rows
took up to 1.8 times its time for three, of eight up to 2.9 times), so that RWKV-7's step by MKL ran 1.06-1.10x as
fast as by oneDNN for one sequence, and 0.70-0.88x as fast for eight.

So by default (``"auto"``) where this torch has MKL and the processor says it is Intel's (``vendor_id``
``GenuineIntel``), oneDNN multiplies four rows and more (:data:`INTEL_ONEDNN_ROWS`) and torch's product fewer, and a
compiled step keeps inductor's product; elsewhere (AMD's processors, and any other where seqzoo's products ran: what
was measured before run AK) seqzoo's products run from one row. :func:`set_products` overrides it for the process:
``"seqzoo"`` (seqzoo's from one row, on every processor) or ``"torch"`` (torch's product for every row count), and
:func:`products` for a ``with`` block (the process's choice all the same, seen by every thread); where neither has
chosen, the environment variable ``SEQZOO_PRODUCTS`` does (read once per process, at the first decode step that asks;
a value that is not a choice raises there, and ``seqzoo kernels`` and ``seqzoo generate`` name it first). A Hub
bundle's code (``trust_remote_code``) carries its own copy of this module, which its own ``set_products`` sets. An
eager step reads the choice at each step; ``compile_decoding()`` reads it when it compiles (a compiled step keeps the
products it was compiled with). Every choice computes the same values within rounding (a sum in another order).
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator

import torch

CHOICES = ("auto", "torch", "seqzoo")
INTEL_ONEDNN_ROWS = 4  # the fewest rows oneDNN multiplies by default where MKL runs on an Intel processor (run AK)
NEVER = 1 << 30  # onednn_rows() where oneDNN multiplies no rows (more than any decode step has)
CPUINFO = "/proc/cpuinfo"  # where Linux names the processor's vendor
ENV = "SEQZOO_PRODUCTS"  # the environment's choice, where set_products() has not chosen
_choice: str | None = None  # set_products()'s choice; None: the environment's (ENV; "auto" where it is not set)
_env: tuple[str, str | None] | None = None  # (ENV as read, its choice or None where it is not one); None: not read
_vendor: str | None | bool = False  # the processor's vendor string once read (None: unknown); False: not read yet
_mkl_on_intel: bool | None = None  # whether MKL runs on an Intel processor here, once asked


def processor_vendor() -> str | None:
    """The CPU's vendor as it names itself (``"GenuineIntel"``, ``"AuthenticAMD"``, ...), read once from
    ``/proc/cpuinfo`` on Linux and from ``platform.processor()`` elsewhere; None where neither says."""
    global _vendor
    if _vendor is False:
        _vendor = _read_vendor()
    return _vendor


def _read_vendor() -> str | None:
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id" and value.strip():
                    return value.strip()
        return None  # (Linux on a processor that names no vendor there, as ARM's; platform's answer would run uname)
    except OSError:
        pass  # (not Linux, or no /proc: the platform module's answer below)
    described = platform.processor()  # (Windows: "Intel64 Family 6 Model 85 Stepping 7, GenuineIntel")
    for vendor in ("GenuineIntel", "AuthenticAMD"):
        if vendor in described:
            return vendor
    return None


def set_products(choice: str) -> None:
    """Choose for this process who multiplies a decode step's rows by a weight stored by rows on the CPU:
    ``"torch"`` (``F.linear``, MKL's product, for every row count), ``"seqzoo"`` (oneDNN's product eagerly from one
    row, inductor's loops for one row compiled) or ``"auto"`` (the default: where MKL runs on an Intel processor,
    torch's for one to three rows and oneDNN's from four, seqzoo's from one row elsewhere; see the module's
    docstring)."""
    global _choice
    _choice = _checked(choice, "set_products")


def _checked(choice: str, caller: str) -> str:
    if choice not in CHOICES:
        raise ValueError(f"{caller}: {choice!r} is not a choice; choose one of {', '.join(map(repr, CHOICES))}")
    return choice


def _environment() -> str:
    """The choice ``SEQZOO_PRODUCTS`` names (``"auto"`` where it is unset or empty), read once per process; a value
    that is not a choice raises at each decode step that asks, as a misspelt ``SEQZOO_KERNELS`` entry does."""
    choice = _read_environment()[1]
    if choice is None:
        raise ValueError(environment_error())
    return choice


def _read_environment() -> tuple[str, str | None]:
    global _env
    if _env is None:
        raw = os.environ.get(ENV, "")
        value = raw.strip().lower() or "auto"
        _env = (raw, value if value in CHOICES else None)
    return _env


def environment_error() -> str | None:
    """What is wrong with ``SEQZOO_PRODUCTS`` (read once per process), or None where it is unset or a choice."""
    raw, choice = _read_environment()
    if choice is not None:
        return None
    return (f"the environment variable {ENV}={raw!r} is not a choice of who multiplies a decode step's rows; "
            f"choose one of {', '.join(map(repr, CHOICES))} (or leave it unset)")


def chosen() -> str:
    """The choice in force: ``set_products()``'s, else ``SEQZOO_PRODUCTS``'s, else ``"auto"``."""
    return _environment() if _choice is None else _choice


def from_environment() -> bool:
    """Whether the choice in force is ``SEQZOO_PRODUCTS``'s (or its default): ``set_products()`` has not chosen."""
    return _choice is None


@contextlib.contextmanager
def products(choice: str) -> Iterator[None]:
    """:func:`set_products` for a ``with`` block; the choice before it comes back after, however the block ends. (The
    choice is the process's, as set_products' is: decode steps in other threads see it while the block runs.)"""
    global _choice
    before = _choice  # (None: the environment's, again after the block)
    _choice = _checked(choice, "products")
    try:
        yield
    finally:
        _choice = before


def _on_intel_mkl() -> bool:
    global _mkl_on_intel
    if _mkl_on_intel is None:  # (asked at every eager decode step: read once)
        _mkl_on_intel = torch.backends.mkl.is_available() and processor_vendor() == "GenuineIntel"
    return _mkl_on_intel


def seqzoo_products() -> bool:
    """Whether seqzoo's own products multiply one sequence (one row: oneDNN's eagerly, inductor's loops compiled):
    the choice set, and under ``"auto"`` not where MKL runs on an Intel processor (where oneDNN starts at one row)."""
    return onednn_rows() == 1


def onednn_rows() -> int:
    """The fewest rows of a decode step's product that oneDNN's product is to multiply (where its other conditions
    hold: ``seqzoo/kernels/onednn_linear.py``): 1 where seqzoo's products are chosen, :data:`INTEL_ONEDNN_ROWS` under
    ``"auto"`` where MKL runs on an Intel processor, and :data:`NEVER` where torch's are chosen."""
    choice = chosen()
    if choice != "auto":
        return 1 if choice == "seqzoo" else NEVER
    return INTEL_ONEDNN_ROWS if _on_intel_mkl() else 1


__all__ = ["CHOICES", "ENV", "INTEL_ONEDNN_ROWS", "NEVER", "chosen", "environment_error", "from_environment",
           "onednn_rows", "processor_vendor", "products", "seqzoo_products", "set_products"]
