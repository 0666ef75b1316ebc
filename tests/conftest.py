"""Shared fixtures. Model tests are driven by the registry: every registered preset family is enrolled."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest
import torch

import seqzoo
from seqzoo.registry import architecture_for_model_type, preset_values, smallest_preset

# Under pytest-xdist (the README's `-n 2`) each worker runs torch on one thread, and so do the processes its tests
# start: N workers then keep N cores busy. With torch's default of a thread per core in each worker, two workers on
# two cores took longer than one process (12.3 against 10.7 minutes; one thread each: 6.3).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# No test reaches the network: tests build their models, tokenizers and checkpoints themselves (a hub download would
# pass only where a network is at hand, or hang where there is none). A connection or name lookup for anything but this
# machine fails at once, naming the address, in this process and in every Python process a test starts (through
# OFFLINE_SITE's sitecustomize.py on PYTHONPATH; a test that sets PYTHONPATH itself uses python_path()).
OFFLINE_SITE = Path(__file__).resolve().parent / "offline_site"
_guard_spec = importlib.util.spec_from_file_location("network_guard", OFFLINE_SITE / "network_guard.py")
network_guard = importlib.util.module_from_spec(_guard_spec)
_guard_spec.loader.exec_module(network_guard)
network_guard.install()


def python_path(*entries) -> str:
    """A PYTHONPATH of ``entries`` that keeps the network guard in the processes it is given to."""
    return os.pathsep.join([str(OFFLINE_SITE), *(str(entry) for entry in entries if str(entry) != str(OFFLINE_SITE))])


os.environ["PYTHONPATH"] = python_path(*filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)))

# Tiny, deliberately odd sizes so shape bugs cannot hide behind powers of two.
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# Fields each architecture resets when a preset is shrunk to TINY: fields derived from the sizes are recomputed.
TINY_OVERRIDES = {
    "seqzoo_mamba": {"time_step_rank": "auto"},
    "seqzoo_mamba2": {"num_heads": None, "head_dim": 16},
    # The low-rank widths are deliberately all different and different from the hidden size, so a transposed LoRA
    # cannot pass a test. With the x070 zero init of the output projections a fresh model is position-wise (each
    # block the identity), and padding, cache and truncated-BPTT tests could not fail; a non-zero gain makes them
    # test the recurrence. Untied, the x070 embedding is uniform(+-1e-4), which ln0's eps (1e-5) leaves at ~0.02
    # scale: the residual stream is tiny and bf16 / summation-order rounding is magnified ~50x in the shared tests'
    # absolute tolerances; tied, the embedding takes the head's unit-scale init. (tests/models/test_rwkv7_model.py
    # covers the x070 values.)
    "seqzoo_rwkv7": {"head_size": 16, "intermediate_size": None, "decay_low_rank_dim": 8, "a_low_rank_dim": 12,
                     "v_low_rank_dim": 4, "gate_low_rank_dim": 20, "output_init_gain": 0.5,
                     "tie_word_embeddings": True},
}
SIZE_SUFFIX = re.compile(r"-(tiny|small|medium|large|base|\d+[mkb])$")


@pytest.fixture(autouse=True)
def _forget_warnings_given():
    """Each test sees the once-per-process warnings (an unknown config field, a misspelt environment variable)
    afresh, whatever ran before it."""
    from seqzoo.kernels import registry as kernel_registry
    from seqzoo.models import configuration_utils, inputs
    from seqzoo.models.hybrid import modeling_hybrid

    for warned in (configuration_utils._WARNED_UNKNOWN, kernel_registry._WARNED_ENV,
                   inputs._WARNED_NO_ATTENTION, modeling_hybrid._WARNED_STATE_BYTES,
                   inputs._WARNED_CHECKPOINT_CACHE):
        warned.clear()
    yield


def preset_families() -> dict[str, str]:
    """family name -> its smallest preset (``lstm`` -> ``lstm-tiny``, ``transformer-gpt2`` -> ``...-small``)."""
    families: dict[str, list[str]] = {}
    for name in seqzoo.list_models():
        match = SIZE_SUFFIX.search(name)
        families.setdefault(name[: match.start()] if match else name, []).append(name)
    return {family: smallest_preset(among=names) for family, names in sorted(families.items())}


# The shared tests of the language models (forward, generation, padding, caches, truncated BPTT, ...) enrol every
# family with a causal-LM head; the encoder-decoders have their own shared tests (tests/seq2seq).
FAMILIES = {family: preset for family, preset in preset_families().items()
            if "causal-lm" in preset_values(preset)[0].heads}
SEQ2SEQ_FAMILIES = {family: preset for family, preset in preset_families().items()
                    if "seq2seq" in preset_values(preset)[0].heads}


# A hybrid preset shrinks to three layers, its recurrent mixer on both sides of an attention layer (so RWKV-7's value
# residual crosses it), with the recurrent mixer's tiny sizes.
HYBRID_TINY_SETTINGS = {
    "rwkv7": {k: v for k, v in TINY_OVERRIDES["seqzoo_rwkv7"].items() if k not in ("intermediate_size",
                                                                                  "tie_word_embeddings")},
    "mamba2": {"head_dim": 16},
    "attention": {"num_attention_heads": 4, "num_key_value_heads": 2},
}


def _tiny_hybrid(values: dict) -> None:
    recurrent = next(kind for kind in values["mixer_types"] if kind != "attention")
    values["mixer_types"] = [recurrent, "attention", recurrent]
    values["num_hidden_layers"] = values["mlp_layers"] = values["intermediate_size"] = None
    values["mixer_config"] = {kind: {**settings, **HYBRID_TINY_SETTINGS.get(kind, {})}
                              for kind, settings in values.get("mixer_config", {}).items()}


def tiny_config(preset: str, **overrides):
    spec, values = preset_values(preset)
    values.update(TINY)
    if spec.model_type == "seqzoo_hybrid":
        _tiny_hybrid(values)
    # Fields derived from the sizes are recomputed for the tiny sizes.
    values.update(TINY_OVERRIDES.get(spec.model_type, {}))
    values.update(overrides)
    return spec.config_class(**values)


def tiny_llama_pair(pad_token_id: int, seed: int = 0):
    """A tiny eager ``LlamaForCausalLM`` of transformers' own (vocabulary 99, 2 layers, grouped keys and values) and
    the seqzoo Transformer converted from it: a reference that seqzoo did not write, for the generate() tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from seqzoo.conversions.llama import convert_llama

    torch.manual_seed(seed)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         pad_token_id=pad_token_id)).eval()
    llama.set_attn_implementation("eager")
    return llama, convert_llama(llama).eval()


def tiny_model(preset: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(preset, **overrides)
    model = architecture_for_model_type(config.model_type).default_head(config)
    return model.eval()


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str, monkeypatch: pytest.MonkeyPatch | None = None, register: bool = False):
    """``benchmarks/<name>.py`` imported as a module (the benchmarks are scripts, not a package), registered in
    ``sys.modules`` before it runs where its dataclasses look their module up there: for the test's duration with
    ``monkeypatch``, for good with ``register``."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    if monkeypatch is not None:
        monkeypatch.setitem(sys.modules, name, module)
    elif register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def decode_step_inputs(batch: int, vocab: int, seed: int = 3):
    """A 5-token prompt, its mask, 4 tokens to feed one by one and their masks, for the decode-step tests. With
    more than one row, row 1 is left-padded and two fed tokens are padding (a padded token's row keeps its states)."""
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (batch, 5), generator=gen)
    prompt_mask = torch.ones(batch, 5, dtype=torch.long)
    steps = torch.randint(0, vocab, (batch, 4), generator=gen)
    step_masks = torch.ones(batch, 4, dtype=torch.long)
    if batch > 1:
        prompt_mask[1, :2] = 0
        step_masks[1, 2] = 0
        step_masks[-1, 0] = 0
    return prompt, prompt_mask, steps, step_masks


@pytest.fixture(params=sorted(FAMILIES), ids=sorted(FAMILIES))
def family_preset(request) -> str:
    return FAMILIES[request.param]


def families_where(capability: str, value: bool = True) -> list:
    """pytest params of the families whose tiny model has ``capabilities.<capability> == value`` (tests enrol by
    what a model can do, not by its name)."""
    return [pytest.param(preset, id=family) for family, preset in sorted(FAMILIES.items())
            if getattr(tiny_config(preset).capabilities, capability) == value]


def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str, group: str,
                   entries: dict[str, str]) -> None:
    """An installed plugin distribution in ``tmp_path`` (on sys.path): module ``seqzoo_<name>`` holding ``source``,
    and its entry points ``{entry: function}`` in ``group`` (``seqzoo.models`` / ``seqzoo.kernels``)."""
    module = f"seqzoo_{name}"
    (tmp_path / f"{module}.py").write_text(source)
    dist = tmp_path / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: seqzoo-{name}\nVersion: 0.1\n")
    lines = "".join(f"{entry} = {module}:{function}\n" for entry, function in entries.items())
    (dist / "entry_points.txt").write_text(f"[{group}]\n{lines}")
    monkeypatch.syspath_prepend(str(tmp_path))
