"""Decode benchmark: every family's per-token decode step (B=1 and B=8) and 512-token prefill against the fastest CPU
runtime its users have, and ``generate()`` against the model's own raw cached step loop -- interleaved, one run.

    pip install -r benchmarks/requirements-decode.txt
    python benchmarks/bench_decode.py            # the sizes BENCHMARKS.md reports (half an hour, one thread)
    python benchmarks/bench_decode.py --quick    # the -small sizes only, the same repeats (a couple of minutes)
    python benchmarks/bench_decode.py --smoke    # tiny sizes, one repeat: checks that the script runs (seconds)
    python benchmarks/bench_decode.py --compile  # also seqzoo's compiled decode step (model.compile_decoding())
    python benchmarks/bench_decode.py --compile --compile-plain  # and compiled by inductor without seqzoo's pass
    python benchmarks/bench_decode.py --head-layout columns  # also the vocabulary head stored by columns
    python benchmarks/bench_decode.py --weight-layout columns  # also every weight matrix stored by columns
    python benchmarks/bench_decode.py --other-products  # also the other choice of products than this processor's
    python benchmarks/bench_decode.py --fixed-model  # also the steps in model.fixed_while_decoding() (seqzoo generate)
    python benchmarks/bench_decode.py --generate-only --repeats 15 --new-tokens 32  # generate() overhead alone

Peers, each holding the same weights as the seqzoo model it is timed against (checked: same logits first):

* RWKV-7: BlinkDL's ``rwkv`` package (its x070 CPU path, TorchScript, ``cpu fp32``) on a random x070 ``.pth``,
  which seqzoo loads through its converter (``seqzoo convert rwkv7``). The package decodes one sequence per call,
  so its B=8 step is eight calls, as its users batch.
* Mamba / Mamba-2: transformers' ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` (its pure-PyTorch path; the CUDA
  kernels do not install on CPU), built from the seqzoo config by the hf-mamba exporter.
* Transformer: transformers' ``LlamaForCausalLM`` (sdpa), built by the llama exporter.
* RNN / LSTM / GRU: the classic LM written by hand on ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (PyTorch's
  word-language-model shape), stepped one token at a time with its (h, c).

Every peer runs under ``torch.no_grad()`` as seqzoo does. ``generate()`` is greedy with a fixed number of new
tokens; its raw loop is prefill + one cached forward and an argmax per token; a seqzoo model's ``generate()`` is also
timed through transformers' own decoding loop (``set_generate_loop("transformers")``). Llama's own generate /
raw-loop ratio is measured after each family's (the Transformer's Llama peer; for the other families a
``LlamaForCausalLM`` of the same width, depth and vocabulary), as the floor transformers' loop sets. Each model's
``generate()`` cases are interleaved among themselves, each timed call after an untimed one. Ratios are peer /
seqzoo (above 1: seqzoo is faster) and generate / raw loop (1.00x: no overhead). One torch thread unless
``--threads`` says otherwise; medians over interleaved rounds: the mode's repeats, and more for a set of fast cases,
until its timed calls add up to three seconds (``--min-seconds``; at most 200 rounds).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from torch import nn

import seqzoo
from seqzoo.conversions import hf_mamba, llama
from seqzoo.conversions.rwkv7 import convert_rwkv7
from seqzoo.kernels import product_choice
from seqzoo.models import decode_loop
from seqzoo.models.compat import output_cache
from seqzoo.models.compiled_decoding import fixed_model_options

# name -> what to time: (RWKV-7 sizes as (hidden, layers, vocab)), the other families' (preset, overrides) pairs.
MODES = {
    "full": dict(rwkv7=[(256, 4, 300), (512, 8, 300), (768, 12, 300), (768, 12, 65536)],
                 others=[{}, "larger"], steps=8, repeats=3, prefill=512, prefill_repeats=5, new_tokens=16,
                 min_seconds=3.0),
    "quick": dict(rwkv7=[(256, 4, 300)], others=[{}], steps=8, repeats=3, prefill=512, prefill_repeats=5,
                  new_tokens=16, min_seconds=3.0),
    "smoke": dict(rwkv7=[(128, 2, 99)], others=["tiny"], steps=2, repeats=1, prefill=16, prefill_repeats=1,
                  new_tokens=4, min_seconds=0.0),
}
# The other families' "larger" size: about four times the -small presets' parameters.
LARGER = {"mamba": dict(hidden_size=512, num_hidden_layers=8), "mamba2": dict(hidden_size=512, num_hidden_layers=8),
          "transformer": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4),
          "lstm": dict(hidden_size=1024), "gru": dict(hidden_size=1024), "rnn": dict(hidden_size=1024)}
TINY = dict(hidden_size=64, num_hidden_layers=2, vocab_size=99, pad_token_id=98, bos_token_id=97, eos_token_id=97)
FAMILIES = ("rwkv7", "mamba", "mamba2", "transformer", "lstm", "gru", "rnn")
PROMPT = 16  # tokens before the timed decode steps
BATCHES = (1, 8)
MAX_ROUNDS = 200  # the most interleaved rounds a set of cases is timed in, however fast (interleaved())


# ---- timing ---------------------------------------------------------------------------------------------------

def interleaved(cases: dict[str, Callable[[], Callable[[], object]]], repeats: int, warmup: int = 1,
                min_seconds: float = 0.0, rounds: list[int] | None = None) -> dict[str, float]:
    """Median seconds of each case's timed part, interleaved. A case is ``prepare() -> run``: only ``run`` is timed
    (the prefill before a decode loop is not). Each round runs the cases in a shuffled order (the same from run to
    run), so that no case always runs right after the same other: a model run after another finds its weights and
    objects out of the caches, and in a fixed order a variant that always followed the peer read up to 6% slower
    than the same steps run as the model (BENCHMARKS.md, run AN).

    At least ``repeats`` rounds after the ``warmup``, and more, up to :data:`MAX_ROUNDS`, until the timed calls add
    up to ``min_seconds``: a set of cases of a few milliseconds each (a small model's 8-step loop takes 2 ms) is
    timed in dozens of rounds instead of three, whose median moved a ratio by up to a third from run to run
    (BENCHMARKS.md, run AP); a slow set keeps ``repeats``. The rounds timed are appended to ``rounds`` where given."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names, order = list(cases), random.Random(0)
    index = timed = 0
    while index < warmup + repeats or (timed < min_seconds and index < warmup + MAX_ROUNDS):
        for name in order.sample(names, len(names)):
            run = cases[name]()
            start = time.perf_counter()
            run()
            if index >= warmup:
                samples[name].append(time.perf_counter() - start)
                timed += samples[name][-1]
        index += 1
    if rounds is not None:
        rounds.append(index - warmup)
    return {name: statistics.median(values) for name, values in samples.items()}


# ---- one interface over seqzoo models and their peers -----------------------------------------------------------

class Runner:
    """What the benchmark does with a model: prefill a (B, T) batch into a state, step a state by one token."""

    def prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:  # last logits (B, V), state
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:  # tokens (B,) -> logits (B, V)
        raise NotImplementedError

    def in_float64(self) -> Runner | None:
        """The same model computing in float64, for the same-function check's tight comparison; None where the
        runtime computes in float32 only."""
        return None

    def decoding(self) -> contextlib.AbstractContextManager:
        """The block a timed decode loop runs in."""
        return contextlib.nullcontext()


class SeqzooRunner(Runner):
    """A seqzoo model; ``products``, where given, the choice of who multiplies one sequence by a weight stored by rows
    that its calls run under (``seqzoo.kernels.product_choice``: "torch" or "seqzoo"), else the process's; ``fixed``:
    its decode loops run in ``model.fixed_while_decoding()``, as ``seqzoo generate`` decodes."""

    def __init__(self, model: nn.Module, products: str | None = None, fixed: bool = False) -> None:
        self.model, self.products, self.fixed = model, products, fixed

    def decoding(self):
        return self.model.fixed_while_decoding() if self.fixed else contextlib.nullcontext()

    def _choice(self):
        return contextlib.nullcontext() if self.products is None else product_choice.products(self.products)

    def prefill(self, ids):
        # The last position's logits only, as generate() asks (the rwkv package and the classic peer compute no
        # others); every position's would be a (T, V) product the peer does not make.
        with self._choice():
            out = self.model(ids, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], output_cache(out)

    def step(self, tokens, state):
        with self._choice():
            out = self.model(tokens[:, None], cache=state, use_cache=True)
        return out.logits[:, -1], output_cache(out)

    def compiled(self, backend: str, **options: Any) -> SeqzooRunner:
        """A copy of this runner's model with its decode steps compiled (under its choice of products, which
        ``compile_decoding()`` reads as it compiles)."""
        with self._choice():
            model = copy.deepcopy(self.model).compile_decoding(backend=backend, **options)
        return SeqzooRunner(model, self.products)

    def in_float64(self):
        return SeqzooRunner(copy.deepcopy(self.model).double(), self.products)


class TransformersRunner(Runner):
    """A transformers causal LM stepped by hand with its own cache, under the keyword the installed release takes
    (``cache`` from 5.24; ``past_key_values`` / ``cache_params`` with ``cache_position`` before)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        params = inspect.signature(type(model).forward).parameters
        self.cache_kwarg = next(n for n in ("cache", "past_key_values", "cache_params") if n in params)
        self.needs_position = "cache_position" in params and self.cache_kwarg != "cache"

    def _cache(self, out):
        return next(getattr(out, n) for n in ("cache", "past_key_values", "cache_params") if hasattr(out, n)
                    and getattr(out, n) is not None)

    def prefill(self, ids):
        extra = {"cache_position": torch.arange(ids.shape[1])} if self.needs_position else {}
        out = self.model(ids, use_cache=True, logits_to_keep=1, **extra)  # (as the seqzoo runner)
        self.length = ids.shape[1]
        return out.logits[:, -1], (self._cache(out), ids.shape[1])

    def step(self, tokens, state):
        cache, length = state
        extra = {"cache_position": torch.tensor([length])} if self.needs_position else {}
        out = self.model(tokens[:, None], use_cache=True, **{self.cache_kwarg: cache}, **extra)
        return out.logits[:, -1], (self._cache(out), length + 1)

    def in_float64(self):
        return TransformersRunner(copy.deepcopy(self.model).double())


class RWKVPackageRunner(Runner):
    """BlinkDL's ``rwkv`` package: one sequence per call, a list of tensors as its state."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def prefill(self, ids):
        rows = [self.model.forward(row.tolist(), None) for row in ids]
        return torch.stack([logits for logits, _ in rows]), [state for _, state in rows]

    def step(self, tokens, states):
        rows = [self.model.forward([int(token)], state) for token, state in zip(tokens, states)]
        return torch.stack([logits for logits, _ in rows]), [state for _, state in rows]


class ClassicPeer(nn.Module):
    """The classic LM on torch.nn's fused recurrent layer, as a user writes it: embed -> nn.LSTM -> decoder."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        config = model.config
        cell = {"seqzoo_lstm": nn.LSTM, "seqzoo_gru": nn.GRU, "seqzoo_rnn": nn.RNN}[config.model_type]
        extra = {"nonlinearity": config.nonlinearity} if cell is nn.RNN else {}
        self.embed = nn.Embedding(config.vocab_size, config.embedding_size)
        self.rnn = cell(config.embedding_size, config.hidden_size, config.num_hidden_layers, batch_first=True, **extra)
        self.decoder = nn.Linear(config.output_dim, config.vocab_size, bias=model.lm_head.bias is not None)
        self.embed.weight = nn.Parameter(model.model.embed_tokens.weight.detach().clone())
        self.decoder.load_state_dict(model.lm_head.state_dict())
        for i, layer in enumerate(model.model.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.rnn, f"{name}_l{i}").data.copy_(getattr(layer, name).detach())
        self.eval()


class ClassicRunner(Runner):
    """The peer's steps as its fastest CPU configuration runs them: ``nn.LSTM``'s one-token call through oneDNN
    (torch's default on CPU) costs 4-8x what the ATen path costs (BENCHMARKS.md), so the LSTM's steps run with
    oneDNN off; the GRU's and RNN's are the same either way. The prefill keeps torch's default."""

    def __init__(self, peer: ClassicPeer) -> None:
        self.peer = peer
        self.onednn_in_steps = not isinstance(peer.rnn, nn.LSTM)

    def prefill(self, ids):
        out, state = self.peer.rnn(self.peer.embed(ids))
        return self.peer.decoder(out[:, -1]), state

    def step(self, tokens, state):
        if self.onednn_in_steps:
            out, state = self.peer.rnn(self.peer.embed(tokens[:, None]), state)
        else:
            with torch.backends.mkldnn.flags(enabled=False):
                out, state = self.peer.rnn(self.peer.embed(tokens[:, None]), state)
        return self.peer.decoder(out[:, -1]), state

    def in_float64(self):
        return ClassicRunner(copy.deepcopy(self.peer).double())


# ---- building each family's pair ----------------------------------------------------------------------------

@dataclass
class Pair:
    family: str
    size: str
    ours: nn.Module
    peer: Runner
    peer_name: str
    peer_generate: nn.Module | None = None  # a transformers model whose own generate() sets the floor
    notes: list[str] = field(default_factory=list)


def random_x070(hidden: int, layers: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random RWKV-7 x070 state dict in RWKV-LM's names and shapes (head size 64, as the package assumes),
    magnitudes chosen so that every term of the recurrence matters."""
    gen = torch.Generator().manual_seed(seed)
    C, N = hidden, 64
    H, ffn = C // N, 4 * C
    ranks = {"w": max(32, C // 16), "a": max(32, C // 16), "v": max(16, C // 32), "g": max(64, C // 8)}

    def randn(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=gen) * scale + shift

    sd = {"emb.weight": randn(vocab, C), "head.weight": randn(vocab, C, scale=C**-0.5)}
    for norm in ("blocks.0.ln0", "ln_out"):
        sd[f"{norm}.weight"], sd[f"{norm}.bias"] = randn(C, scale=0.1, shift=1.0), randn(C, scale=0.1)
    for i in range(layers):
        p = f"blocks.{i}."
        for norm in ("ln1", "ln2"):
            sd[f"{p}{norm}.weight"], sd[f"{p}{norm}.bias"] = randn(C, scale=0.1, shift=1.0), randn(C, scale=0.1)
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            sd[f"{p}att.{name}"] = torch.rand(1, 1, C, generator=gen)
        for prefix in ("w", "a", "v"):
            sd[f"{p}att.{prefix}0"] = randn(1, 1, C)
            sd[f"{p}att.{prefix}1"] = randn(C, ranks[prefix], scale=0.3)
            sd[f"{p}att.{prefix}2"] = randn(ranks[prefix], C, scale=0.3)
        sd[f"{p}att.g1"], sd[f"{p}att.g2"] = randn(C, ranks["g"], scale=0.3), randn(ranks["g"], C, scale=0.3)
        sd[f"{p}att.k_k"] = randn(1, 1, C, scale=0.2, shift=0.7)
        sd[f"{p}att.k_a"] = randn(1, 1, C, scale=0.2, shift=1.0)
        sd[f"{p}att.r_k"] = randn(H, N, scale=0.3)
        for name in ("receptance", "key", "value", "output"):
            sd[f"{p}att.{name}.weight"] = randn(C, C, scale=C**-0.5)
        sd[f"{p}att.ln_x.weight"], sd[f"{p}att.ln_x.bias"] = randn(C, scale=0.1, shift=1.0), randn(C, scale=0.1)
        sd[f"{p}ffn.x_k"] = torch.rand(1, 1, C, generator=gen)
        sd[f"{p}ffn.key.weight"] = randn(ffn, C, scale=C**-0.5)
        sd[f"{p}ffn.value.weight"] = randn(C, ffn, scale=ffn**-0.5)
    return sd


def rwkv_package() -> Any:
    """BlinkDL's RWKV class on its CPU path. The package reads its switches from the environment when imported."""
    for name, value in (("RWKV_V7_ON", "1"), ("RWKV_JIT_ON", "1"), ("RWKV_CUDA_ON", "0")):
        if os.environ.setdefault(name, value) != value:
            raise SystemExit(f"bench_decode: {name}={os.environ[name]!r} is set; the benchmark needs {name}={value}")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            from rwkv.model import RWKV
    except ImportError as error:
        raise SystemExit(f"bench_decode: BlinkDL's rwkv package is needed for the RWKV-7 peer ({error}); "
                         "pip install -r benchmarks/requirements-decode.txt") from error
    return RWKV


def rwkv7_pair(hidden: int, layers: int, vocab: int, folder: Path) -> Pair:
    path = folder / f"x070-{hidden}-{layers}-{vocab}.pth"
    torch.save(random_x070(hidden, layers, vocab), path)
    ours = convert_rwkv7(path, dtype=torch.float32)
    with contextlib.redirect_stdout(sys.stderr):  # the package prints as it loads
        peer = rwkv_package()(str(path.with_suffix("")), strategy="cpu fp32")  # it appends .pth
    return Pair("rwkv7", f"{hidden} / {layers} / {vocab}", ours, RWKVPackageRunner(peer), "rwkv package")


def preset_model(family: str, size: Any) -> tuple[nn.Module, str]:
    overrides = {"tiny": TINY, "larger": LARGER[family]}.get(size, size) if isinstance(size, str) else size
    if family in ("lstm", "gru", "rnn"):
        overrides = {**overrides, "dropout": 0.0}
    torch.manual_seed(0)
    model = seqzoo.create_model(f"{family}-small", **overrides).eval()
    if family in ("lstm", "gru", "rnn"):
        # The classic init starts the top layer near zero, so all logits nearly tie and greedy tokens would hang on
        # rounding (the generate / raw-loop check compares them); torch.nn's default scale changes no timing.
        top = model.model.layers[-1]
        nn.init.uniform_(top.weight_ih, -top.hidden_size**-0.5, top.hidden_size**-0.5)
    c = model.config
    label = f"{c.hidden_size} x {c.num_hidden_layers} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M)"
    return model, label


def family_pair(family: str, size: Any, folder: Path) -> Pair:
    if family == "rwkv7":
        return rwkv7_pair(*size, folder)
    ours, label = preset_model(family, size)
    if family in ("mamba", "mamba2"):
        peer = transformers_peer(ours, hf_mamba)
        name = type(peer).__name__
        return Pair(family, label, ours, TransformersRunner(peer), name)
    if family == "transformer":
        ours.set_attn_implementation("sdpa")
        peer = transformers_peer(ours, llama)
        peer.set_attn_implementation("sdpa")
        return Pair(family, label, ours, TransformersRunner(peer), "LlamaForCausalLM", peer_generate=peer)
    runner = ClassicRunner(ClassicPeer(ours))
    onednn = "" if runner.onednn_in_steps else ", oneDNN off"
    return Pair(family, label, ours, runner, f"nn.{type(runner.peer.rnn).__name__} step loop{onednn}")


def llama_of_equal_size(ours: nn.Module) -> nn.Module:
    """A ``LlamaForCausalLM`` (random weights) of the model's width, depth and vocabulary, whose own generate() /
    raw-loop ratio is the floor transformers' loop sets for a model of that size (issue 18's yardstick)."""
    return random_llama(ours.config, ours.config.hidden_size)


def random_llama(c: Any, hidden: int) -> nn.Module:
    """A ``LlamaForCausalLM`` (random weights, sdpa) of width ``hidden``, a head per 64 channels, and the depth,
    vocabulary and special tokens of the seqzoo config ``c``."""
    config = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
        pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id)
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(config).eval()
    llama.set_attn_implementation("sdpa")
    return llama


def llama_of_equal_parameters(ours: nn.Module) -> nn.Module:
    """A ``LlamaForCausalLM`` (random weights) of the model's depth and vocabulary whose width gives the parameter
    count nearest the model's (widths in steps of 16, a head per 64 channels, heads of an even size): the floor of a
    Llama of equal size counted in parameters. A classic model's layer holds 2-4 products of its width, a Llama's 16,
    so the Llama of its width and depth is up to eight times larger and its forward costs more against the same loop
    around it."""
    c = ours.config
    target = sum(p.numel() for p in ours.parameters())
    layers, vocab = c.num_hidden_layers, c.vocab_size

    def count(width: int) -> int:  # (LlamaConfig's defaults: untied head, as many key-value heads as heads)
        return layers * (16 * width * width + 2 * width) + width + 2 * vocab * width

    # (heads of an even size that divide the width: Llama's rotary embedding turns pairs of channels)
    widths = [w for w in range(16, 8193, 16) if w % max(1, w // 64) == 0 and w // max(1, w // 64) % 2 == 0]
    width = min(widths, key=lambda w: abs(count(w) - target))
    llama = random_llama(c, width)
    assert sum(p.numel() for p in llama.parameters()) == count(width)
    return llama


def transformers_peer(ours: nn.Module, exporter: Any) -> nn.Module:
    hf_config = exporter.native_config(ours.config)
    peer = transformers.AutoModelForCausalLM.from_config(hf_config)
    peer.load_state_dict(exporter.native_weights(ours.state_dict(), ours.config), strict=True)
    return peer.eval()


# ---- the measurements ---------------------------------------------------------------------------------------------

def check_same_function(pair: Pair, vocab: int) -> None:
    """Refuse to time two models that do not compute the same logits (prefill and one cached step, B=2): as timed,
    in float32, within float32's drift, and again in float64 (every peer but BlinkDL's package, which computes in
    float32 only), where the two must agree to rounding."""
    ids = torch.randint(0, vocab, (2, PROMPT), generator=torch.Generator().manual_seed(1))
    ours, peer = SeqzooRunner(pair.ours), pair.peer
    # float32 sums in another order drift with depth and width (random weights amplify them: at 768 x 12, against
    # the same step in float64, seqzoo's step is off by 1.4e-4 of the logits' scale, its sequence path by 1.1e-4
    # and the package by 0.9e-4, so the two float32 runtimes can differ by twice that), so the bound is relative to
    # that scale; a wrong weight mapping differs at O(1), but a small slip (one Mamba layer's A_log off by 10%:
    # 1.9e-4 of the scale) stays inside it. In float64 the classic models agree with torch.nn to 1e-15 of the scale,
    # and the Transformer and Mamba with transformers' to 0.6-2.9e-7 (Llama computes its rotary frequencies in
    # float32, and transformers' Mamba reference kernels keep parts in float32), so 1e-6 there.
    _compare_logits(pair, ours, peer, ids, 4e-4, 1e-5, "")
    peer64 = peer.in_float64()
    if peer64 is not None:
        _compare_logits(pair, ours.in_float64(), peer64, ids, 1e-6, 1e-12, " (in float64)")


def _compare_logits(pair: Pair, ours: Runner, peer: Runner, ids: torch.Tensor, relative: float, absolute: float,
                    where: str) -> None:
    a, state_a = ours.prefill(ids)
    b, state_b = peer.prefill(ids)
    token = a.argmax(-1)
    checks = [("prefill", a, b)]
    a, _ = ours.step(token, state_a)
    b, _ = peer.step(token, state_b)
    checks.append(("cached step", a, b))
    for what, a, b in checks:
        scale = float(b.abs().max())
        if float((a - b).abs().max()) > relative * scale + absolute:
            raise SystemExit(f"bench_decode: {pair.family} {pair.size}: seqzoo and {pair.peer_name} disagree after "
                             f"the {what}{where} (max |diff| {float((a - b).abs().max()):.2e} at logits up to "
                             f"{scale:.1f}); the comparison would be meaningless")


def decode_case(runner: Runner, ids: torch.Tensor, steps: int) -> Callable[[], Callable[[], object]]:
    def prepare():
        logits, state = runner.prefill(ids)
        holder = [logits.argmax(-1), state]

        def run():
            token, state = holder
            with runner.decoding():
                for _ in range(steps):
                    logits, state = runner.step(token, state)
                    token = logits.argmax(-1)
        return run
    return prepare


def prefill_case(runner: Runner, ids: torch.Tensor) -> Callable[[], Callable[[], object]]:
    return lambda: (lambda: runner.prefill(ids))


def raw_loop(runner: Runner, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    logits, state = runner.prefill(prompt)
    tokens = [logits.argmax(-1)]
    for _ in range(new_tokens - 1):
        logits, state = runner.step(tokens[-1], state)
        tokens.append(logits.argmax(-1))
    return torch.stack(tokens, dim=1)


def generate_cases(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> dict[str, Callable]:
    runner = SeqzooRunner(model) if model.__module__.startswith("seqzoo") else TransformersRunner(model)
    # No EOS: generate() then runs exactly new_tokens steps and picks what the raw loop picks.
    kwargs = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=model.config.pad_token_id,
                  eos_token_id=None)
    generated = model.generate(prompt, **kwargs)[:, prompt.shape[1]:]
    if not torch.equal(generated, raw_loop(runner, prompt, new_tokens)):
        raise SystemExit(f"bench_decode: {type(model).__name__}.generate() and its raw loop produce different tokens")
    cases = {"generate": warmed(lambda: model.generate(prompt, **kwargs)),
             "raw": warmed(lambda: raw_loop(runner, prompt, new_tokens))}
    if hasattr(model, "set_generate_loop"):
        # The same generate() through transformers' own decoding loop (seqzoo's runs by default: README, "seqzoo's
        # decoding loop").
        if not decode_loop.loop_checked():
            print(f"bench_decode: seqzoo's decoding loop was not checked against transformers "
                  f"{transformers.__version__}, so its generate() runs transformers' loop in both columns",
                  file=sys.stderr)
        def through_transformers_loop():
            model.set_generate_loop("transformers")
            try:
                return model.generate(prompt, **kwargs)
            finally:
                model.set_generate_loop("seqzoo")

        if not torch.equal(through_transformers_loop()[:, prompt.shape[1]:], generated):
            raise SystemExit(f"bench_decode: {type(model).__name__}.generate() gives other tokens through "
                             "transformers' loop")
        cases["generate, transformers' loop"] = warmed(through_transformers_loop)
    return cases


def warmed(run: Callable[[], object]) -> Callable[[], Callable[[], object]]:
    """A case whose preparation makes the call once, untimed: the timed call then finds the model's weights and
    Python in the caches, as a decode loop finds them after its prefill, whatever case ran before it (the first
    ``generate()`` of a small model after a Llama's took up to 1.5 ms longer: BENCHMARKS.md, run AB)."""
    def prepare() -> Callable[[], object]:
        run()
        return run
    return prepare


def measure(pair: Pair, mode: dict) -> dict[str, Any]:
    vocab = pair.ours.config.vocab_size - 3  # the presets' special tokens sit at the top: a pad would be masked
    gen = torch.Generator().manual_seed(0)
    check_same_function(pair, vocab)
    ours = SeqzooRunner(pair.ours)
    result: dict[str, Any] = {"family": pair.family, "size": pair.size, "peer": pair.peer_name,
                              "threads": torch.get_num_threads(), "processor": product_choice.processor_vendor(),
                              "products": "seqzoo" if product_choice.seqzoo_products() else "torch",
                              "settings": {k: mode[k] for k in ("steps", "repeats", "prefill", "new_tokens",
                                                                "min_seconds")},
                              "rounds": {}}  # (the rounds each set of cases was timed in: interleaved())

    def timed(part: str, cases: dict, repeats: int) -> dict[str, float]:
        rounds: list[int] = []
        times = interleaved(cases, repeats, min_seconds=mode["min_seconds"], rounds=rounds)
        result["rounds"][part] = rounds[0]
        return times

    # Variants of seqzoo's model timed beside it: compiled decode steps (model.compile_decoding(); the compile is
    # paid on their first steps, timed here once per batch size before the interleaved repeats), the vocabulary
    # head stored by columns (model.set_head_layout("columns")) and every weight matrix stored by columns
    # (model.set_weight_layout("columns")), each on a copy of the model.
    variants: dict[str, SeqzooRunner] = {}
    if mode.get("head_layout") == "columns":
        variants["seqzoo columns"] = SeqzooRunner(copy.deepcopy(pair.ours).set_head_layout("columns"))
    if mode.get("weight_layout") == "columns":
        variants["seqzoo all columns"] = SeqzooRunner(copy.deepcopy(pair.ours).set_weight_layout("columns"))
    if mode.get("other_products"):  # (the other choice than this processor's: seqzoo/kernels/product_choice.py)
        other = "torch" if product_choice.seqzoo_products() else "seqzoo"
        variants[f"seqzoo, {other}'s products"] = SeqzooRunner(copy.deepcopy(pair.ours), other)
    if mode.get("compile"):
        for name in [*variants]:
            variants[name.replace("seqzoo", "seqzoo compiled", 1)] = variants[name].compiled(mode["compile"])
        variants["seqzoo compiled"] = ours.compiled(mode["compile"])
        if mode.get("compile_plain"):  # (inductor without seqzoo's pass: seqzoo/kernels/one_row_products.py)
            variants["seqzoo compiled, plain inductor"] = ours.compiled(
                mode["compile"], options={"post_grad_custom_pre_pass": None})
        if mode.get("compile_unguarded"):  # (as seqzoo generate --compile compiles it)
            variants["seqzoo compiled, unguarded"] = ours.compiled(mode["compile"], **fixed_model_options())
    if mode.get("fixed_model"):  # (its steps in a model.fixed_while_decoding() block, and each eager variant's too; on
        # copies, as the others: a case run right after the same model's finds its weights in the caches)
        for name, runner in [("seqzoo", ours), *variants.items()]:
            if "compiled" not in name:
                variants[f"{name}, model fixed"] = SeqzooRunner(copy.deepcopy(runner.model), runner.products, True)
    result["compile_s"] = {}
    for batch in () if mode.get("generate_only") else BATCHES:
        ids = torch.randint(0, vocab, (batch, PROMPT), generator=gen)
        cases = {"seqzoo": decode_case(ours, ids, mode["steps"]), "peer": decode_case(pair.peer, ids, mode["steps"])}
        for name, runner in variants.items():
            if "compiled" in name:
                start = time.perf_counter()
                decode_case(runner, ids, 2)()()
                result["compile_s"][f"{name} b{batch}"] = time.perf_counter() - start
            cases[name] = decode_case(runner, ids, mode["steps"])
        times = timed(f"decode_b{batch}", cases, mode["repeats"])
        result[f"decode_b{batch}"] = {k: v / mode["steps"] for k, v in times.items()}
    if not mode.get("generate_only"):
        ids = torch.randint(0, vocab, (1, mode["prefill"]), generator=gen)
        cases = {"seqzoo": prefill_case(ours, ids), "peer": prefill_case(pair.peer, ids)}
        cases.update({name: prefill_case(runner, ids) for name, runner in variants.items()
                      if "compiled" not in name and not runner.fixed})  # (the block changes no prefill)
        result["prefill"] = timed("prefill", cases, mode["prefill_repeats"])
    prompt = torch.randint(0, vocab, (1, PROMPT), generator=gen)
    # Each model's cases interleaved apart from the other's: both ratios are within one model, and a small model's
    # call right after a Llama's ran up to 1.5 ms slower (its weights and Python evicted from the caches), which
    # raised whichever of its cases came first (BENCHMARKS.md, run AB).
    ours = timed("generate", {f"seqzoo {k}": v for k, v in generate_cases(pair.ours, prompt,
                                                                          mode["new_tokens"]).items()},
                 mode["repeats"])
    floor = pair.peer_generate if pair.peer_generate is not None else llama_of_equal_size(pair.ours)
    theirs = timed("peer generate", {f"peer {k}": v for k, v in generate_cases(floor, prompt,
                                                                             mode["new_tokens"]).items()},
                   mode["repeats"])
    result["generate"] = {**ours, **theirs}
    if pair.peer_generate is None:  # (the Transformer's peer is a Llama of its width, depth and parameters already)
        equal = llama_of_equal_parameters(pair.ours)
        result["equal_parameters_llama"] = (f"{equal.config.hidden_size} x {equal.config.num_hidden_layers} "
                                            f"({sum(p.numel() for p in equal.parameters()) / 1e6:.1f}M)")
        result["generate"].update(timed("equal-parameter peer generate", {
            f"equal-parameter peer {k}": v for k, v in generate_cases(equal, prompt, mode["new_tokens"]).items()},
            mode["repeats"]))
    return result


# ---- report ---------------------------------------------------------------------------------------------------

def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def _rounds_note(results: list[dict[str, Any]]) -> str:
    """How many interleaved rounds the sets of cases were timed in (not in runs before run AP)."""
    rounds = [n for r in results for n in r.get("rounds", {}).values()]
    if not rounds:
        return ""
    settings = results[0]["settings"]
    return (f", {min(rounds)}-{max(rounds)} interleaved rounds a set of cases (at least {settings['repeats']}, "
            f"until {settings['min_seconds']:g} s timed)")


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"torch {torch.__version__}, transformers {transformers.__version__}, rwkv "
             f"{_version('rwkv')}, Python {platform.python_version()}, "
             f"{results[0].get('threads', '?') if results else torch.get_num_threads()} torch thread(s)"
             + ("" if not results or "products" not in results[0] else  # (not in runs before run AK)
                f", processor {results[0]['processor'] or 'unknown'}, one sequence's products by "
                f"{results[0]['products']}'s (seqzoo.kernels.product_choice)")
             + _rounds_note(results), ""]
    decoded = [r for r in results if "decode_b1" in r]  # (not with --generate-only)
    if decoded:
        lines += ["| family | size | peer | B | seqzoo ms/token | peer ms/token | peer / seqzoo |",
                  "|---|---|---|---|---|---|---|"]
    for r in decoded:
        for batch in BATCHES:
            t = r[f"decode_b{batch}"]
            lines.append(f"| {r['family']} | {r['size']} | {r['peer']} | {batch} | {t['seqzoo'] * 1e3:.2f} | "
                         f"{t['peer'] * 1e3:.2f} | {ratio(t['peer'], t['seqzoo'])} |")
    if any(len(r["decode_b1"]) > 2 for r in decoded):
        lines += ["", "| family | size | B | variant | ms/token | peer ms/token | peer / variant | eager / variant | "
                  "compile s |", "|---|---|---|---|---|---|---|---|---|"]
        for r in decoded:
            for batch in BATCHES:
                t = r[f"decode_b{batch}"]
                for name in (n for n in t if n not in ("seqzoo", "peer")):
                    # Older --json files name the compile time by batch alone.
                    seconds = r.get("compile_s", {}).get(f"{name} b{batch}", r.get("compile_s", {}).get(f"b{batch}"))
                    lines.append(f"| {r['family']} | {r['size']} | {batch} | {name} | {t[name] * 1e3:.2f} | "
                                 f"{t['peer'] * 1e3:.2f} | {ratio(t['peer'], t[name])} | {ratio(t['seqzoo'], t[name])} | "
                                 f"{'' if 'compiled' not in name or seconds is None else f'{seconds:.0f}'} |")
    if decoded:
        lines += ["", "| family | size | prefill tokens | seqzoo ms | peer ms | peer / seqzoo |",
                  "|---|---|---|---|---|---|"]
    for r in decoded:
        t = r["prefill"]
        for name in ("seqzoo", *(n for n in t if n not in ("seqzoo", "peer"))):  # the layout variants after
            label = r["size"] if name == "seqzoo" else f"{r['size']}, {name}"
            lines.append(f"| {r['family']} | {label} | {r['settings']['prefill']} | {t[name] * 1e3:.1f} | "
                         f"{t['peer'] * 1e3:.1f} | {ratio(t['peer'], t[name])} |")
    # What generate() adds per new token, in µs: transformers' loop around the step, which costs about as much for any
    # model; a small step shows it as a large ratio. The model's own ratio last (compare_revisions.py reads it).
    lines += [""] * bool(decoded) + [
        "| family | size | new tokens (B=1) | raw loop ms | generate ms | added µs/token | Llama added µs/token | "
        "Llama generate / raw | Llama of equal parameters: generate / raw | generate / raw, transformers' loop | "
        "generate / raw |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t = r["generate"]
        tokens = r["settings"]["new_tokens"]
        has_floor = "peer generate" in t
        floor = ratio(t["peer generate"], t["peer raw"]) if has_floor else ""
        added = (t["seqzoo generate"] - t["seqzoo raw"]) / tokens * 1e6
        floor_added = f"{(t['peer generate'] - t['peer raw']) / tokens * 1e6:.0f}" if has_floor else ""
        theirs = t.get("seqzoo generate, transformers' loop")  # (not in runs before seqzoo's loop)
        their_ratio = "" if theirs is None else ratio(theirs, t["seqzoo raw"])
        equal = ("same as Llama's" if "peer generate" in t and r["family"] == "transformer" else
                 "" if "equal-parameter peer generate" not in t else  # (not in runs before run AR)
                 f"{ratio(t['equal-parameter peer generate'], t['equal-parameter peer raw'])} "
                 f"({r['equal_parameters_llama']})")
        lines.append(f"| {r['family']} | {r['size']} | {tokens} | {t['seqzoo raw'] * 1e3:.1f} | "
                     f"{t['seqzoo generate'] * 1e3:.1f} | {added:.0f} | {floor_added} | {floor} | {equal} | "
                     f"{their_ratio} | {ratio(t['seqzoo generate'], t['seqzoo raw'])} |")
    return "\n".join(lines)


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", dest="mode", action="store_const", const="quick")
    group.add_argument("--smoke", dest="mode", action="store_const", const="smoke")
    parser.set_defaults(mode="full")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help=f"comma-separated subset of {', '.join(FAMILIES)}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--rwkv7-sizes", help="RWKV-7 sizes instead of the mode's, as HIDDENxLAYERSxVOCAB,... "
                        "(hidden a multiple of 64)")
    parser.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                        help="also time seqzoo's decode step compiled (model.compile_decoding(), inductor unless a "
                             "backend is named), with the compile time of its first steps")
    parser.add_argument("--compile-plain", action="store_true",
                        help="with --compile: also time the step compiled by inductor without seqzoo's one-row "
                             "products pass (compile_decoding(options={'post_grad_custom_pre_pass': None}))")
    parser.add_argument("--compile-unguarded", action="store_true",
                        help="with --compile: also time the step compiled as `seqzoo generate --compile` compiles it, "
                             "without dynamo's guards on the model's modules and weights "
                             "(seqzoo.models.compiled_decoding.fixed_model_options())")
    parser.add_argument("--fixed-model", action="store_true",
                        help="also time seqzoo's decode steps in a model.fixed_while_decoding() block, as `seqzoo "
                             "generate` decodes (the classic models' and RWKV-7's planned steps check the model at a "
                             "cache's first step there only), and each eager variant's (--weight-layout columns ...)")
    parser.add_argument("--other-products", action="store_true",
                        help="also time seqzoo's model with the other choice of who multiplies one sequence by a "
                             "weight stored by rows than this processor's (seqzoo.kernels.product_choice: torch's "
                             "F.linear where seqzoo's oneDNN product and compiled loops run by default, seqzoo's "
                             "where torch's do), and compiled if --compile is given")
    parser.add_argument("--head-layout", choices=["rows", "columns"], default="rows",
                        help="columns: also time seqzoo's model with its vocabulary head stored by columns "
                             "(model.set_head_layout('columns')), and compiled if --compile is given")
    parser.add_argument("--weight-layout", choices=["rows", "columns"], default="rows",
                        help="columns: also time seqzoo's model with every weight matrix stored by columns "
                             "(model.set_weight_layout('columns')), and compiled if --compile is given")
    parser.add_argument("--generate-only", action="store_true",
                        help="time only generate() against the raw loop (and the Llama floor), not the decode step "
                             "against the peer nor the prefill")
    parser.add_argument("--repeats", type=int, help="interleaved repeats of every decode and generate() case instead "
                        "of the mode's (the prefill keeps its own)")
    parser.add_argument("--min-seconds", type=float,
                        help="time each set of interleaved cases in more rounds than --repeats, up to "
                             f"{MAX_ROUNDS}, until its timed calls add up to this many seconds (3 unless --smoke, "
                             "which times 0: its repeats only)")
    parser.add_argument("--new-tokens", type=int, help="tokens generate() and the raw loop produce instead of the "
                        "mode's")
    parser.add_argument("--steps", type=int, help="cached steps in each timed decode loop instead of the mode's (8; "
                        "2 with --smoke): the first step after the prompt, which pays each model's set-up for a new "
                        "sequence, weighs 1/STEPS of the figure")
    parser.add_argument("--json", type=Path, help="also write the raw medians (seconds) to this file")
    parser.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                        help="print the tables of earlier --json files (concatenated) instead of measuring")
    args = parser.parse_args(argv)
    if args.report:
        results = [r for path in args.report for r in json.loads(path.read_text())]
        print(report(results, args))
        return results
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown family {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if args.generate_only:
        variants = [flag for flag, asked in (("--compile", args.compile), ("--head-layout columns",
                    args.head_layout == "columns"), ("--weight-layout columns", args.weight_layout == "columns"),
                    ("--other-products", args.other_products), ("--fixed-model", args.fixed_model)) if asked]
        if variants:
            parser.error(f"--generate-only times generate() of the model as built; {', '.join(variants)} would time "
                         "nothing (they vary the decode step); drop them, or drop --generate-only")
    if args.generate_only and args.steps is not None:
        parser.error("--generate-only times generate() against the raw loop, not the decode loop that --steps sets; "
                     "drop one of them")
    if args.compile_unguarded and args.compile is None:
        parser.error("--compile-unguarded times a compiled step beside --compile's; give --compile too")
    if args.compile_plain and args.compile != "inductor":
        parser.error("--compile-plain times inductor without seqzoo's graph pass beside --compile's inductor; give "
                     f"--compile (inductor){'' if args.compile is None else f', not --compile {args.compile}'}")
    for flag, value in (("--repeats", args.repeats), ("--new-tokens", args.new_tokens), ("--steps", args.steps)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    if args.min_seconds is not None and not 0 <= args.min_seconds < float("inf"):
        parser.error(f"--min-seconds must be a number of seconds, 0 or more, got {args.min_seconds}")
    mode = dict(MODES[args.mode], compile=args.compile, compile_plain=args.compile_plain,
                compile_unguarded=args.compile_unguarded, head_layout=args.head_layout,
                weight_layout=args.weight_layout, generate_only=args.generate_only,
                other_products=args.other_products, fixed_model=args.fixed_model)
    mode.update({key: value for key, value in (("repeats", args.repeats), ("new_tokens", args.new_tokens),
                                               ("steps", args.steps), ("min_seconds", args.min_seconds))
                 if value is not None})
    if args.rwkv7_sizes:
        try:
            mode["rwkv7"] = [tuple(int(n) for n in size.split("x")) for size in args.rwkv7_sizes.split(",")]
        except ValueError:
            parser.error(f"--rwkv7-sizes takes HIDDENxLAYERSxVOCAB,...; got {args.rwkv7_sizes!r}")
        bad = [size for size in mode["rwkv7"] if len(size) != 3 or size[0] % 64 or min(size) < 1]
        if bad:
            parser.error(f"--rwkv7-sizes: {bad[0]} is not HIDDENxLAYERSxVOCAB with hidden a multiple of 64 "
                         "(the rwkv package's head size)")
    results = []
    with torch.no_grad(), tempfile.TemporaryDirectory() as folder:
        for family in families:
            for size in (mode["rwkv7"] if family == "rwkv7" else mode["others"]):
                pair = family_pair(family, size, Path(folder))
                results.append(measure(pair, mode))
                print(f"measured {family} {pair.size}", file=sys.stderr, flush=True)
                if args.json:  # after every pair, so that an interrupted run keeps what it measured
                    args.json.write_text(json.dumps(results, indent=1))
    print(report(results, args))
    return results


if __name__ == "__main__":
    main()
