"""``model.set_head_layout("columns")``: the vocabulary head's weight stored by columns changes its memory order only.
What it buys (one-row products on CPU) is measured in benchmarks/bench_decode.py (``--head-layout columns``)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from seqzoo.models.compat import output_cache
from tests.conftest import FAMILIES, tiny_model

PROMPT = torch.tensor([[5, 17, 33, 8, 61], [70, 12, 3, 98, 44]])


def by_columns(weight: torch.Tensor) -> bool:
    return weight.stride() == (1, weight.shape[0]) and weight.t().is_contiguous()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_columns_change_the_order_not_the_model(family):
    model = tiny_model(FAMILIES[family])
    weight = model.lm_head.weight
    before = weight.detach().clone()
    with torch.no_grad():
        rows_out = model(PROMPT, use_cache=True)
        rows_step = model(PROMPT[:, :1] + 1, cache=output_cache(rows_out), use_cache=True).logits
        rows_tokens = model.generate(PROMPT, max_new_tokens=5, do_sample=False)
        assert model.set_head_layout("columns") is model
        assert model.lm_head.weight is weight and by_columns(weight)  # the same Parameter, stored by columns
        assert torch.equal(weight, before)
        cols_out = model(PROMPT, use_cache=True)
        cols_step = model(PROMPT[:, :1] + 1, cache=output_cache(cols_out), use_cache=True).logits
        assert torch.equal(model.generate(PROMPT, max_new_tokens=5, do_sample=False), rows_tokens)
    # The sums run in another order: equal to float32 rounding.
    torch.testing.assert_close(cols_out.logits, rows_out.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cols_step, rows_step, rtol=1e-5, atol=1e-5)
    if model.config.tie_word_embeddings:  # the tied embedding is the same Parameter: it moves with the head
        assert model.get_input_embeddings().weight is weight
    model.set_head_layout("rows")
    assert model.lm_head.weight is weight and weight.is_contiguous() and torch.equal(weight, before)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_columns_save_load_and_train_as_rows_do(tmp_path, tied):
    model = tiny_model(FAMILIES["rwkv7"], tie_word_embeddings=tied)
    model.set_head_layout("columns")
    model.save_pretrained(tmp_path)  # transformers' tied-tensor check flattens with view(): by rows while saving
    assert by_columns(model.lm_head.weight)  # and by columns again after
    model.save_pretrained(tmp_path / "given", state_dict=model.state_dict())  # as seqzoo's trainer saves
    model.set_head_layout("rows").save_pretrained(tmp_path / "rows")
    model.set_head_layout("columns")
    for folder in (tmp_path, tmp_path / "given"):  # the same file (a tied head written once, as by rows)
        assert (folder / "model.safetensors").read_bytes() == (tmp_path / "rows" / "model.safetensors").read_bytes()
    for folder in (tmp_path, tmp_path / "given"):
        loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
        assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
        assert torch.equal(loaded.get_input_embeddings().weight, model.get_input_embeddings().weight)
        assert loaded.lm_head.weight.is_contiguous()  # a loaded model starts by rows
        assert (loaded.lm_head.weight is loaded.get_input_embeddings().weight) == tied

    # An optimizer created before the change keeps training the same Parameter, which stays by columns.
    model.train()
    twin = tiny_model(FAMILIES["rwkv7"], tie_word_embeddings=tied).train()
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (model, twin)]
    model.set_head_layout("rows").set_head_layout("columns")
    for m, optimizer in zip((model, twin), optimizers):
        m(PROMPT, labels=PROMPT).loss.backward()
        optimizer.step()
    assert by_columns(model.lm_head.weight)
    torch.testing.assert_close(model.lm_head.weight, twin.lm_head.weight, rtol=1e-5, atol=1e-6)
    assert not torch.equal(model.lm_head.weight, loaded.lm_head.weight)  # the step did change it


def test_bad_layouts_are_refused():
    model = tiny_model(FAMILIES["lstm"])
    with pytest.raises(ValueError, match=r"layout must be 'rows' or 'columns', got 'column'"):
        model.set_head_layout("column")
    model.lm_head = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"\(Identity\) has no weight; a layout applies to a floating-point"):
        model.set_head_layout("columns")
    model = tiny_model(FAMILIES["lstm"], tie_word_embeddings=False)
    torch.nn.utils.parametrizations.weight_norm(model.lm_head)
    with pytest.raises(ValueError, match="computes its weight on every call .* no stored weight"):
        model.set_head_layout("columns")
    class Marked(torch.Tensor):  # a tensor subclass, as torchao's quantised weights and DTensor shards are
        pass

    model = tiny_model(FAMILIES["lstm"])
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().as_subclass(Marked))
    with pytest.raises(ValueError, match="has a Parameter of Marked, dtype torch.float32, shape .*; a layout applies"):
        model.set_head_layout("columns")
    with torch.device("meta"):
        meta = tiny_model(FAMILIES["lstm"])
    with pytest.raises(ValueError, match=r"on the meta device \(offloaded, or not loaded yet\)"):
        meta.set_head_layout("columns")


def test_a_head_accelerate_offloads_is_refused_until_set_before(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    model = tiny_model(FAMILIES["lstm"])  # tied: the head's Parameter is still on the CPU beside the embedding
    device_map = {name: "cpu" for name, _ in model.named_children()}
    device_map["lm_head"] = "disk"
    offloaded = accelerate.dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))
    with pytest.raises(ValueError, match="is offloaded by accelerate .*: set the layout before offloading"):
        offloaded.set_head_layout("columns")
    first = tiny_model(FAMILIES["lstm"], tie_word_embeddings=False)
    reference = first(PROMPT).logits
    first.set_head_layout("columns")
    accelerate.cpu_offload(first, execution_device="cpu")  # set before: accelerate keeps the order it found
    torch.testing.assert_close(first(PROMPT).logits, reference, rtol=1e-5, atol=1e-5)
