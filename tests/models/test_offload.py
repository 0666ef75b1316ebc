"""accelerate's offloading and dispatch around every causal LM: its hooks load a module's weights before the module's
forward and move a call's arguments (rebuilding dicts) to the execution device. A model must compute the same with
them: the mixers read some submodules' weights without calling them (Mamba's convolution, RWKV-7's GroupNorm), and
layers hand values to later layers (RWKV-7's value residual, attention weights)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import FAMILIES, tiny_model

accelerate = pytest.importorskip("accelerate")

PROMPT = torch.tensor([[5, 17, 33, 8, 61, 2], [70, 12, 3, 98, 44, 9]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])


def offloaded(family, how, tmp_path):
    model = tiny_model(FAMILIES[family], tie_word_embeddings=False)
    if how == "cpu_offload":  # every module's weights on the meta device between its calls
        accelerate.cpu_offload(model, execution_device="cpu")
        return model
    if how == "dispatch":  # a hook on every module, moving the arguments of each call
        return accelerate.dispatch_model(model, device_map={"": "cpu"}, force_hooks=True)
    # Each layer on disk, loaded whole for its call; the rest in memory.
    layers = {f"model.layers.{i}": "disk" for i in range(model.config.num_hidden_layers)}
    device_map = {"lm_head": "cpu", **{f"model.{name}": "cpu" for name, _ in model.model.named_children()
                                       if name != "layers"}, **layers}
    return accelerate.dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))


@pytest.mark.parametrize("how", ["cpu_offload", "dispatch", "disk"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_offloaded_models_compute_what_they_compute_whole(family, how, tmp_path):
    whole = tiny_model(FAMILIES[family], tie_word_embeddings=False)
    with torch.no_grad():
        expected = whole(PROMPT, attention_mask=MASK).logits
        tokens = whole.generate(PROMPT, attention_mask=MASK, max_new_tokens=4, do_sample=False)
        model = offloaded(family, how, tmp_path)
        torch.testing.assert_close(model(PROMPT, attention_mask=MASK).logits, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(model.generate(PROMPT, attention_mask=MASK, max_new_tokens=4, do_sample=False), tokens)


def test_attention_weights_reach_the_output_through_hooks():
    whole = tiny_model(FAMILIES["transformer"], tie_word_embeddings=False)
    whole.set_attn_implementation("eager")
    expected = whole(PROMPT, output_attentions=True).attentions
    model = accelerate.dispatch_model(whole, device_map={"": "cpu"}, force_hooks=True)
    got = model(PROMPT, output_attentions=True).attentions
    assert len(got) == len(expected) == model.config.num_hidden_layers
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("family", ["gru", "mamba", "rwkv7", "transformer", "hybrid-rwkv7"])
def test_from_pretrained_with_layers_on_disk_loads_and_checks_them(family, tmp_path):
    model = tiny_model(FAMILIES[family], tie_word_embeddings=False)
    model.save_pretrained(tmp_path / "good")
    device_map = {"lm_head": "cpu", **{f"model.{name}": "cpu" for name, _ in model.model.named_children()
                                       if name != "layers"}}
    device_map |= {f"model.layers.{i}": "disk" if i % 2 else "cpu" for i in range(model.config.num_hidden_layers)}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "good", device_map=device_map,
                                                  offload_folder=str(tmp_path / "offload"))
    assert any(p.is_meta for p in loaded.model.layers[1].parameters())  # layer 1 does live on disk
    with torch.no_grad():
        torch.testing.assert_close(loaded(PROMPT).logits, model(PROMPT).logits, rtol=1e-5, atol=1e-5)
        # A damaged weight in the offloaded layer is found as one in memory is.
        weight = next(p for p in model.model.layers[1].parameters() if p.dim() == 2)
        weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "bad")
    with pytest.raises(ValueError, match=r"holds NaN or infinite weights in model\.layers\.1\."):
        AutoModelForCausalLM.from_pretrained(tmp_path / "bad", device_map=device_map,
                                             offload_folder=str(tmp_path / "offload-bad"))
