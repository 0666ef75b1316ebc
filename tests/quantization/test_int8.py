"""Int8 dynamic quantisation: the classic cells' recurrent projections are quantised along with every Linear layer
(torchao), run in the reference backend, and stay close to the float model; the fused backend declines quantised
weights with a reason instead of reading their storage."""

from __future__ import annotations

import os
import sys

import pytest
import torch

import seqzoo
from seqzoo.kernels import dispatch
from seqzoo.kernels.registry import select
from seqzoo.kernels.rnn_cells import fused
from seqzoo.registry import smallest_preset
from tests.conftest import tiny_model

IDS = torch.tensor([[5, 17, 3, 44, 9, 21, 8], [0, 0, 30, 7, 60, 4, 13]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]])


class Marked(torch.Tensor):
    """A tensor subclass standing in for a quantised weight: it computes as a float tensor through F.linear."""


def lstm_args(marked: bool):
    torch.manual_seed(0)
    x, h, c = torch.randn(2, 5, 8), torch.zeros(2, 6), torch.zeros(2, 6)
    w_ih, w_hh, b_ih, b_hh = torch.randn(24, 8), torch.randn(24, 6), torch.randn(24), torch.randn(24)
    if marked:
        w_ih, w_hh = w_ih.as_subclass(Marked), w_hh.as_subclass(Marked)
    return x, h, c, w_ih, w_hh, b_ih, b_hh


def test_the_fused_backend_declines_quantised_weights_and_the_reference_runs_them():
    ok, reason = fused.supports(*lstm_args(marked=True))
    assert not ok and "Marked" in reason and "plain float weights" in reason
    assert fused.supports(*lstm_args(marked=False)) == (True, "")
    assert fused.supports_key(*lstm_args(marked=True)) != fused.supports_key(*lstm_args(marked=False))
    assert select("lstm", *lstm_args(marked=False)).name == "torch"
    assert select("lstm", *lstm_args(marked=True)).name == "reference"
    y_marked, _ = dispatch("lstm", *lstm_args(marked=True))
    y_float, _ = dispatch("lstm", *lstm_args(marked=False))
    torch.testing.assert_close(y_marked.as_subclass(torch.Tensor), y_float, rtol=1e-5, atol=1e-6)


def test_quantize_int8_names_the_extra_it_needs(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(ImportError, match=r"needs torchao.*seqzoo\[quant\]"):
        seqzoo.quantize_int8(tiny_model("lstm-tiny"))


def test_quantize_int8_refuses_a_model_with_adapters_or_quantised_already():
    """Both failed later inside torchao's tensor subclass (NotImplementedError for aten.view / aten.mm)."""
    from peft import get_peft_model

    model = tiny_model("lstm-tiny")
    with pytest.raises(ValueError, match=r"holds peft adapter layers \(.*\).*merge_and_unload\(\)"):
        seqzoo.quantize_int8(get_peft_model(model, seqzoo.peft_config(model)))
    # the model inside the PeftModel, its adapter layers nested below its top-level modules
    with pytest.raises(ValueError, match=r"LSTMForCausalLM holds peft adapter layers \(ParamWrapper\)"):
        seqzoo.quantize_int8(model)
    model = tiny_model("lstm-tiny")
    model.model.layers[0].weight_hh = torch.nn.Parameter(model.model.layers[0].weight_hh.detach().as_subclass(Marked),
                                                         requires_grad=False)
    with pytest.raises(ValueError, match=r"is quantised already \(model.layers.0.weight_hh hold Marked weights\)"):
        seqzoo.quantize_int8(model)


def test_quantize_int8_refuses_a_model_with_nothing_to_quantise():
    with pytest.raises(ValueError, match=r"Sequential has no Linear layer or mixer projection to quantise"):
        seqzoo.quantize_int8(torch.nn.Sequential(torch.nn.Embedding(5, 3)))


def test_a_partly_offloaded_model_is_refused():
    """Every weight is checked, not the first: here only the second layer is offloaded (its weights on the meta
    device). The check comes before torchao is imported, so this runs without it."""
    import accelerate

    model = tiny_model("lstm-tiny")
    accelerate.cpu_offload(model.model.layers[1], execution_device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"is offloaded \(model.layers.1.weight_ih, model.layers.1.weight_hh are on "
                                         r"the meta device"):
        seqzoo.quantize_int8(model)


@pytest.fixture(scope="module")
def torchao_quantization():
    # .ci/run installs torchao for this file alone (see there why) and sets the variable, so a broken install fails.
    if os.environ.get("SEQZOO_REQUIRE_TORCHAO") == "1":
        import torchao.quantization

        return torchao.quantization
    return pytest.importorskip("torchao.quantization", reason="torchao is not installed (pip install 'seqzoo[quant]')")


def logits(model, ids=IDS, mask=MASK):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru", "transformer", "mamba"])
def test_int8_quantises_recurrent_projections_and_linear_layers_and_stays_close(arch, torchao_quantization):
    model = tiny_model(smallest_preset(arch))
    reference = logits(model)
    targets = seqzoo.int8_targets(model)
    seqzoo.quantize_int8(model)
    with pytest.raises(ValueError, match="is quantised already"):
        seqzoo.quantize_int8(model)
    quantised = {name for name, p in model.named_parameters() if isinstance(p, torchao_quantization.Int8Tensor)}
    assert quantised == {t if t.rsplit(".", 1)[-1].startswith("weight_") else f"{t}.weight" for t in targets}
    if arch in ("rnn", "lstm", "gru"):
        assert {name.rsplit(".", 1)[-1] for name in quantised} == {"weight_ih", "weight_hh", "weight"}
        assert len(quantised) == 2 * model.config.num_hidden_layers + 1  # + lm_head
    got = logits(model)
    assert not torch.equal(got, reference)  # the int8 weights are in use
    assert (got - reference).abs().max() <= 0.05 * reference.abs().max()
    # Activations are quantised per token, so a left-padded row still computes what the prompt alone computes.
    alone = logits(model, IDS[1:, 2:], MASK[1:, 2:])
    torch.testing.assert_close(got[1:, 2:], alone, rtol=1e-4, atol=1e-4)
    # An Int8Tensor's memory order is torchao's: the head, or any quantised matrix, is refused by name.
    with pytest.raises(ValueError, match=r"the vocabulary head \(Linear\) has a Parameter of Int8Tensor.*a quantised "
                                         "or sharded weight keeps its own layout"):
        model.set_head_layout("columns")
    with pytest.raises(ValueError, match=r"set_weight_layout: model\..* has a Parameter of Int8Tensor"):
        model.set_weight_layout("columns")


def test_a_quantised_model_refuses_to_save_before_writing_anything(tmp_path, torchao_quantization):
    """save_pretrained failed inside transformers ("invalid python storage") after writing config.json."""
    model = seqzoo.quantize_int8(tiny_model("lstm-tiny"))
    with pytest.raises(ValueError, match=r"is quantised \(model.layers.0.weight_ih.*Int8Tensor.*save the float model"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # accelerate's way, a state dict handed in (accelerator.get_state_dict(model)), is refused the same way
    with pytest.raises(ValueError, match=r"is quantised \(model.layers.0.weight_ih.*Int8Tensor.*save the float model"):
        model.save_pretrained(tmp_path / "out", state_dict=model.state_dict())
    assert not (tmp_path / "out").exists()


def test_lora_on_the_parameters_of_a_quantised_model_is_refused(torchao_quantization):
    # peft accepted it, and the first forward failed inside torchao (an Int8Tensor weight plus a LoRA delta)
    model = seqzoo.quantize_int8(tiny_model("gru-tiny"))
    with pytest.raises(ValueError, match=r"is quantised \(model.layers.0.weight_ih.*peft's LoRA on a parameter "
                                         r"cannot add to a quantised weight"):
        seqzoo.peft_config(model)
    # with no parameter asked for (LoRA on the head alone), the refusal is the one for any adapter
    with pytest.raises(ValueError, match=r"is quantised \(model.layers.0.weight_ih.*its int8 layers pass no "
                                         r"gradient to their inputs, so no lora adapter could learn"):
        seqzoo.peft_config(model, target_modules=["lm_head"], target_parameters=[])


@pytest.mark.parametrize("preset, method", [("transformer-tiny", "lora"), ("mamba-tiny", "ia3"),
                                            ("lstm-tiny", "prompt_tuning")])
def test_any_adapter_on_a_quantised_model_is_refused(preset, method, torchao_quantization):
    # torchao's int8 dynamic-activation layers pass no gradient to their input: peft accepted LoRA on the Linear
    # layers (its TorchaoLoraLinear) or a soft prompt, and backward failed with "element 0 of tensors does not
    # require grad" (the quantised head cuts every adapter off from the loss)
    model = seqzoo.quantize_int8(tiny_model(preset))
    with pytest.raises(ValueError, match=rf"is quantised \(.*Int8Tensor weights\), and its int8 layers pass no "
                                         rf"gradient to their inputs, so no {method} adapter could learn"):
        seqzoo.peft_config(model, method)


def test_an_offloaded_model_is_refused(torchao_quantization):
    # torchao quantised the meta tensors accelerate leaves in the model, and the first forward failed inside
    # accelerate's hook (TypeError: new() received an invalid combination of arguments)
    import accelerate

    model = accelerate.cpu_offload(tiny_model("lstm-tiny"), execution_device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"is offloaded \(model.layers.0.weight_ih.*meta device.*load the model whole"):
        seqzoo.quantize_int8(model)
    assert {type(p) for p in model.parameters()} == {torch.nn.Parameter}


@pytest.mark.parametrize("preset", ["gru-tiny", "transformer-tiny"])
def test_a_quantised_model_refuses_a_training_step(preset, torchao_quantization):
    # backward failed with "element 0 of tensors does not require grad" (a quantised head), or trained only what
    # lies above the last quantised layer; transformers refuses to fine-tune a purely quantised model too
    model = seqzoo.quantize_int8(tiny_model(preset)).train()
    with pytest.raises(RuntimeError, match=r"is quantised to int8 \(seqzoo.quantize_int8\), for inference: .* "
                                           r"cannot train"):
        model(IDS, labels=IDS)
    with pytest.raises(RuntimeError, match=r"is quantised to int8 .* cannot train"):
        model.model(IDS)  # the backbone called directly (by a custom head) was not refused
    with torch.no_grad():
        model(IDS)  # (train mode without gradients: dropout off or on, nothing learns)
    model.eval()
    assert model(IDS).logits.shape[:2] == IDS.shape


def _torch_quantised(arch: str):
    """A model quantised by torch's own quantize_dynamic (deprecated, still used): int8 Linear modules with packed
    weights that are no parameters."""
    import warnings

    model = tiny_model(smallest_preset(arch))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_a_model_quantised_by_torch_is_refused_by_save_and_by_quantize_int8(arch, tmp_path):
    """save_pretrained failed inside huggingface_hub with config.json written and no weights; quantize_int8 stacked
    torchao's scheme on the LSTM's cells beside torch's head, and told the Transformer it had no Linear layer."""
    model = _torch_quantised(arch)
    with pytest.raises(ValueError, match=r"is quantised \([a-z_.0-9]+ is a torch\.ao\.nn\.quantized\.dynamic.*"
                                         r"Linear.*do not save with save_pretrained"):
        model.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()
    with pytest.raises(ValueError, match=r"is quantised already \([a-z_.0-9]+ is a torch\.ao\.nn\.quantized"):
        seqzoo.quantize_int8(model)


def _resize_is_refused_leaving_the_model_as_it_was(model) -> None:
    before = logits(model)
    with pytest.raises(ValueError, match=r"is quantised \(.*\), and quantised weights cannot be resized: resize the "
                                         "float model, then quantise it"):
        model.resize_token_embeddings(120)
    assert model.get_input_embeddings().num_embeddings == model.config.vocab_size == 99
    torch.testing.assert_close(logits(model), before, rtol=0, atol=0)


@pytest.mark.parametrize("tied", [True, False])
def test_resizing_a_quantised_model_is_refused_before_anything_changes(tied, torchao_quantization):
    """transformers resized the embedding, then failed inside torchao on the int8 head (aten.mean, or
    'tensor_data_names' with mean_resizing=False), leaving a 120-row embedding beside a 99-row head and config."""
    _resize_is_refused_leaving_the_model_as_it_was(seqzoo.quantize_int8(tiny_model("lstm-tiny",
                                                                                   tie_word_embeddings=tied)))


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_resizing_a_model_quantised_by_torch_is_refused_before_anything_changes(arch):
    # ("'function' object has no attribute 'size'", from the packed Linear's weight(), with the embedding resized)
    _resize_is_refused_leaving_the_model_as_it_was(_torch_quantised(arch))


def test_a_float64_model_is_refused_naming_the_dtypes_torchao_takes():
    """torchao asserted deep inside its quantisation ("AssertionError: Unsupported input dtype: torch.float64")."""
    model = tiny_model("lstm-tiny").double()
    with pytest.raises(ValueError, match=r"holds torch\.float64 weights \(model\.layers\.0\.weight_ih, .*takes "
                                         r"torch\.float32, torch\.bfloat16, torch\.float16 weights: convert the model "
                                         r"first \(model\.float\(\)\)"):
        seqzoo.quantize_int8(model)
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())


def test_a_half_precision_model_quantises(torchao_quantization):
    model = tiny_model("gru-tiny").to(torch.bfloat16)
    reference = logits(model).float()
    got = logits(seqzoo.quantize_int8(model))
    assert got.dtype == torch.bfloat16
    assert (got.float() - reference).abs().max() <= 0.05 * reference.abs().max()


@pytest.mark.parametrize("preset", ["lstm-tiny", "transformer-tiny"])
def test_a_quantised_model_converted_to_float64_after_is_refused_at_its_call(preset, torchao_quantization):
    """model.double() after quantising fed float64 activations to the int8 layers, which failed inside torchao
    ("AssertionError: Unsupported input dtype: torch.float64")."""
    model = seqzoo.quantize_int8(tiny_model(preset)).double()
    for module in (model, model.model):
        with pytest.raises(RuntimeError, match=r"is quantised to int8 .*embeddings have been converted to "
                                               r"torch\.float64 since; .*convert the float model, then quantise it"):
            with torch.no_grad():
                module(input_ids=IDS, attention_mask=MASK)
