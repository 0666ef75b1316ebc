"""``model.set_head_layout("columns")`` / ``set_weight_layout("columns")``: the vocabulary head's weight, or every
weight matrix, stored by columns changes the memory order only. What it buys (one-row products on CPU) is measured in
benchmarks/bench_decode.py (``--head-layout columns``, ``--weight-layout columns``)."""

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


def matrices_by_columns(model) -> tuple[set[str], set[str]]:
    """The names of the parameters stored by columns, and of the 2-d ones that are not."""
    columns, other = set(), set()
    for name, parameter in model.named_parameters(remove_duplicate=False):  # a tied head under both names
        if parameter.dim() == 2:
            (columns if by_columns(parameter) and not parameter.is_contiguous() else other).add(name)
    return columns, other


def expected_matrices(model) -> set[str]:
    """What set_weight_layout lays out, listed independently: nn.Linear weights and the mixers' projections."""
    names = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, torch.nn.Linear):
            names.add(prefix + "weight")
        names.update(prefix + name for name in getattr(module, "projection_parameters", ()))
    head = model.get_output_embeddings().weight  # an embedding tied to the head is the same Parameter
    # By columns when the output is at least as wide as the input; narrower ones stay by rows.
    return {name for name, p in model.named_parameters(remove_duplicate=False)
            if (name in names or p is head) and p.shape[0] >= p.shape[1]}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_matrix_by_columns_changes_the_order_not_the_model(family):
    model = tiny_model(FAMILIES[family])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        rows_out = model(PROMPT, use_cache=True)
        rows_step = model(PROMPT[:, :1] + 1, cache=output_cache(rows_out), use_cache=True).logits
        rows_tokens = model.generate(PROMPT, max_new_tokens=5, do_sample=False)
        single = model.generate(PROMPT[:1], max_new_tokens=5, do_sample=False)
        assert model.set_weight_layout("columns") is model
        columns, other = matrices_by_columns(model)
        expected = expected_matrices(model)
        # A tied embedding (the head's Parameter) moves with the head; an untied one keeps its order.
        embedding = model.get_input_embeddings().weight
        assert by_columns(embedding) == model.config.tie_word_embeddings
        assert columns == expected and len(expected) >= 3, sorted(columns ^ expected)
        assert "lm_head.weight" in columns
        for name, parameter in model.named_parameters():  # the same Parameters, the same values
            assert parameter is parameters[name] and torch.equal(parameter, before[name])
        cols_out = model(PROMPT, use_cache=True)
        cols_step = model(PROMPT[:, :1] + 1, cache=output_cache(cols_out), use_cache=True).logits
        assert torch.equal(model.generate(PROMPT, max_new_tokens=5, do_sample=False), rows_tokens)
        assert torch.equal(model.generate(PROMPT[:1], max_new_tokens=5, do_sample=False), single)
    torch.testing.assert_close(cols_out.logits, rows_out.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cols_step, rows_step, rtol=1e-5, atol=1e-5)
    model.set_weight_layout("rows")
    assert matrices_by_columns(model)[0] == set()
    for name, parameter in model.named_parameters():
        assert parameter is parameters[name] and parameter.is_contiguous() and torch.equal(parameter, before[name])


@pytest.mark.parametrize("family", ["gru", "rwkv7"])
def test_every_matrix_by_columns_saves_and_trains_as_rows_do(tmp_path, family):
    model = tiny_model(FAMILIES[family]).set_weight_layout("columns")
    if family == "rwkv7":  # a down-projection (out < in) is faster by rows: it keeps them
        down = model.model.layers[0].ffn.value.weight
        assert down.shape[0] < down.shape[1] and down.is_contiguous()
        assert by_columns(model.model.layers[0].ffn.key.weight)
    model.save_pretrained(tmp_path / "columns")
    assert matrices_by_columns(model)[0]  # by columns again after saving
    model.set_weight_layout("rows").save_pretrained(tmp_path / "rows")
    assert ((tmp_path / "columns" / "model.safetensors").read_bytes()
            == (tmp_path / "rows" / "model.safetensors").read_bytes())
    model.set_weight_layout("columns").train()
    twin = tiny_model(FAMILIES[family]).train()
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (model, twin)]
    for m, optimizer in zip((model, twin), optimizers):
        torch.manual_seed(1)  # the same dropout masks
        m(PROMPT, labels=PROMPT).loss.backward()
        optimizer.step()
    assert matrices_by_columns(model)[0] == expected_matrices(model)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(model.lm_head.weight, tiny_model(FAMILIES[family]).lm_head.weight)  # the step did change it


def test_every_matrix_is_checked_before_any_changes():
    with pytest.raises(ValueError, match=r"set_weight_layout: layout must be 'rows' or 'columns', got 'cols'"):
        tiny_model(FAMILIES["gru"]).set_weight_layout("cols")
    model = tiny_model(FAMILIES["gru"], tie_word_embeddings=False)
    torch.nn.utils.parametrizations.weight_norm(model.model.layers[-1], "weight_hh")
    with pytest.raises(ValueError, match=r"set_weight_layout: model.layers.1.weight_hh \(ParametrizedGRUMixer\) "
                                         r"computes its "
                                         r"weight on every call"):
        model.set_weight_layout("columns")
    assert matrices_by_columns(model)[0] == set()  # nothing changed, the head included

    class Marked(torch.Tensor):
        pass

    model = tiny_model(FAMILIES["rwkv7"])
    value = model.model.layers[0].attn.value
    value.weight = torch.nn.Parameter(value.weight.detach().as_subclass(Marked))
    with pytest.raises(ValueError, match=r"model.layers.0.attn.value.weight \(Linear\) has a Parameter of Marked, "
                                         r"dtype torch.float32, shape .*; a layout applies to a floating-point 2-d"):
        model.set_weight_layout("columns")
    assert matrices_by_columns(model)[0] == set()


def test_gradients_follow_the_order():
    # A gradient already there when the order changes is laid out with its Parameter: torch's fused optimizers
    # (fused=True) read a parameter, its gradient and its state as one memory order, and on the CPU compute wrong
    # values, without an error, where they differ.
    model, twin = tiny_model(FAMILIES["gru"]).train(), tiny_model(FAMILIES["gru"]).train()
    for m in (model, twin):
        m(PROMPT, labels=PROMPT).loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.set_weight_layout("columns")
    for name, p in model.named_parameters():
        assert p.grad.stride() == p.stride() and torch.equal(p.grad, grads[name]), name
    assert matrices_by_columns(model)[0] == expected_matrices(model)
    for m in (model, twin):  # its state is made now, in the parameters' order
        torch.optim.AdamW(m.parameters(), lr=1e-2, fused=True).step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    model.set_weight_layout("rows")
    assert all(p.grad.is_contiguous() and p.is_contiguous() for p in model.parameters())
    head = tiny_model(FAMILIES["gru"], tie_word_embeddings=False).lm_head.weight
    model.lm_head.weight.grad = torch.randn(head.shape).to_sparse()  # a sparse gradient has no memory order
    model.set_weight_layout("columns")
    assert by_columns(model.lm_head.weight) and model.lm_head.weight.grad.layout is torch.sparse_coo
