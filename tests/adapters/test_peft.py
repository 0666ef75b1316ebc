"""peft on every architecture with no argument beyond what the model says: LoRA (the classic cells' recurrent weights
included, through ``target_parameters``) and IA3, for the causal LM, sequence and token classification heads, each
adapter training a step, saving and loading, and merging into the same logits; and prompt tuning (a soft prompt,
nothing to merge) on every architecture."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from peft import PeftModel, TaskType, get_peft_model
from peft.tuners.ia3 import IA3Layer
from peft.tuners.lora import LoraLayer, ParamWrapper
from torch import nn

import seqzoo
from seqzoo.layers.recurrent import RecurrentMixer
from seqzoo.registry import smallest_preset
from tests.conftest import tiny_config, tiny_model

ARCHITECTURES = seqzoo.list_architectures("causal-lm")
IDS = torch.tensor([[5, 17, 3, 44, 9, 21, 8], [11, 2, 30, 7, 60, 4, 13]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]])


def build(arch: str, task: str) -> nn.Module:
    torch.manual_seed(0)
    extra = {"num_labels": 3} if "classification" in task else {}
    return seqzoo.get_architecture(arch).heads[task](tiny_config(smallest_preset(arch), **extra)).eval()


def labels_for(task: str) -> torch.Tensor:
    if task == "causal-lm":
        return IDS.masked_fill(MASK == 0, -100)
    if task == "sequence-classification":
        return torch.tensor([2, 0])
    return (IDS % 3).masked_fill(MASK == 0, -100)


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


def backbone_linears(model: nn.Module) -> set[str]:
    return {name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.split(".")[0] not in type(model).head_modules}


def train_step(peft_model: nn.Module, task: str) -> None:
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=0.05)
    loss = peft_model(input_ids=IDS, attention_mask=MASK, labels=labels_for(task)).loss
    loss.backward()
    assert all(p.grad is not None for p in trainable)
    optimizer.step()
    peft_model.eval()


def check_round_trip(arch: str, task: str, method: str, tmp_path) -> tuple[nn.Module, nn.Module]:
    """Train a step, save and reload the adapter, merge: the same logits at every stage. Returns (trained peft
    model, a fresh base model)."""
    base_logits = logits(build(arch, task))
    model = get_peft_model(build(arch, task), seqzoo.peft_config(build(arch, task), method))
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    train_step(model, task)
    trained = logits(model)
    assert not torch.allclose(trained, base_logits, atol=1e-4), "training the adapter changed nothing"
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"{name} is frozen but changed"

    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(build(arch, task), tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(loaded), trained, rtol=1e-5, atol=1e-5)

    merged = loaded.merge_and_unload()
    assert type(merged) is type(build(arch, task))
    assert not any(isinstance(m, (LoraLayer, IA3Layer)) for m in merged.modules())
    torch.testing.assert_close(logits(merged), trained, rtol=1e-4, atol=1e-5)
    return model, merged


# The causal LM of every architecture; the classification heads are one shared class each (seqzoo/models/heads.py),
# tried on a classic recurrent model and a block model.
LORA_CASES = [(arch, "causal-lm") for arch in ARCHITECTURES] + [
    (arch, task) for arch in ("gru", "rwkv7") for task in ("sequence-classification", "token-classification")]


@pytest.mark.parametrize("arch, task", LORA_CASES)
def test_lora_with_no_arguments_adapts_every_layer_trains_saves_loads_and_merges(arch, task, tmp_path):
    model, merged = check_round_trip(arch, task, "lora", tmp_path)
    linears = backbone_linears(build(arch, task))
    adapted = {name.removeprefix("base_model.model.") for name, module in model.named_modules()
               if isinstance(module, LoraLayer) and not isinstance(module, ParamWrapper)}
    assert adapted == linears
    mixers = [m for m in build(arch, task).modules() if isinstance(m, RecurrentMixer)]
    wrapped = {(name.removeprefix("base_model.model."), module.parameter_name)
               for name, module in model.named_modules() if isinstance(module, ParamWrapper)}
    assert len(wrapped) == 2 * len(mixers)
    assert {p for _, p in wrapped} == ({"weight_ih", "weight_hh"} if mixers else set())
    if task != "causal-lm":  # peft trains the new classifier head in full
        assert any("score" in name and p.requires_grad for name, p in model.named_parameters())


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES
                                  if not any(isinstance(m, RecurrentMixer) for m in build(a, "causal-lm").modules())])
def test_ia3_with_no_arguments_scales_every_linear_layer_and_merges(arch, tmp_path):
    model, _ = check_round_trip(arch, "causal-lm", "ia3", tmp_path)
    adapted = {name.removeprefix("base_model.model.") for name, module in model.named_modules()
               if isinstance(module, IA3Layer)}
    assert adapted == backbone_linears(build(arch, "causal-lm"))


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification"])
def test_ia3_on_the_classification_heads(task, tmp_path):
    check_round_trip("mamba", task, "ia3", tmp_path)


def test_ia3_scales_the_output_of_each_linear_layer():
    """IA3 with no arguments scales each layer's output (peft's "feedforward" layers would scale its input)."""
    model = get_peft_model(build("transformer", "causal-lm"), seqzoo.peft_config(build("transformer", "causal-lm"),
                                                                                 "ia3"))
    layers = [m for m in model.modules() if isinstance(m, IA3Layer)]
    assert layers
    torch.manual_seed(1)
    for layer in layers:
        base = layer.get_base_layer()
        x = torch.randn(2, base.in_features)
        with torch.no_grad():
            layer.ia3_l["default"].uniform_(0.5, 1.5)
            torch.testing.assert_close(layer(x), base(x) * layer.ia3_l["default"].flatten())


def test_ia3_on_a_classic_model_takes_the_modules_it_is_given():
    """IA3 is refused on the classic LSTM only for want of a default: given target_modules, it adapts them."""
    config = seqzoo.peft_config(build("lstm", "causal-lm"), "ia3", target_modules=["lm_head"])
    model = get_peft_model(build("lstm", "causal-lm"), config)
    assert {name for name, m in model.named_modules() if isinstance(m, IA3Layer)} == {"base_model.model.lm_head"}


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_lora_adapts_the_recurrent_weights_as_the_merged_weights_say(arch):
    """With only the recurrent parameters adapted (the classic LM's backbone has no Linear layer), the merged
    weight is W + (alpha / r) B A, computed here by hand from the adapter's factors."""
    model = get_peft_model(build(arch, "causal-lm"), seqzoo.peft_config(build(arch, "causal-lm"),
                                                                       init_lora_weights=False))
    wrappers = {(name, m.parameter_name): m for name, m in model.named_modules() if isinstance(m, ParamWrapper)}
    expected = {}
    for (name, parameter), wrapper in wrappers.items():
        layer = name.removeprefix("base_model.model.").split(".weight_")[0].removesuffix(".base_layer")
        base = dict(build(arch, "causal-lm").named_parameters())[f"{layer}.{parameter}"]
        a, b = wrapper.lora_A["default"].weight, wrapper.lora_B["default"].weight
        expected[f"{layer}.{parameter}"] = base + wrapper.scaling["default"] * (b @ a)
    merged = dict(model.merge_and_unload().named_parameters())
    assert len(expected) == 4
    for key, weight in expected.items():
        torch.testing.assert_close(merged[key], weight.detach(), rtol=1e-5, atol=1e-6)


def test_peft_config_refuses_what_it_cannot_do():
    lstm = build("lstm", "causal-lm")
    with pytest.raises(ValueError, match=r"no nn.Linear layer in its backbone for IA3.*weight_hh, weight_ih.*"
                                         r"method='lora'"):
        seqzoo.peft_config(lstm, "ia3")
    with pytest.raises(ValueError, match=r"unknown adapter method .dora.*lora, ia3, prompt_tuning"):
        seqzoo.peft_config(lstm, "dora")
    with pytest.raises(ValueError, match=r"task_type='SEQ_CLS' does not fit LSTMForCausalLM.*'CAUSAL_LM'"):
        seqzoo.peft_config(lstm, task_type="SEQ_CLS")
    assert seqzoo.peft_config(lstm, task_type="CAUSAL_LM", r=4).r == 4
    # peft's own TaskType is compared by its value (a str enum, whose str() is "TaskType.CAUSAL_LM")
    assert seqzoo.peft_config(lstm, task_type=TaskType.CAUSAL_LM).task_type == "CAUSAL_LM"
    with pytest.raises(ValueError, match=r"task_type=<TaskType.SEQ_CLS: 'SEQ_CLS'> does not fit LSTMForCausalLM"):
        seqzoo.peft_config(lstm, task_type=TaskType.SEQ_CLS)
    with pytest.raises(ValueError, match=r"prompt_tuning is offered for causal LMs, sequence classifiers and "
                                         r"encoder-decoders.*TOKEN_CLS.*method='lora'"):
        seqzoo.peft_config(build("lstm", "token-classification"), "prompt_tuning")
    # A misspelt module name: peft raises only when nothing at all matches, and the recurrent weights always do.
    with pytest.raises(ValueError, match=r"target_modules \['lm_haed'\] name no module of LSTMForCausalLM"):
        seqzoo.peft_config(lstm, target_modules=["lm_haed"])
    assert seqzoo.peft_config(lstm, target_modules=["lm_head"]).target_modules == {"lm_head"}
    # A part of a name: peft compares whole name components, so "proj" matches none of q_proj, k_proj ...
    with pytest.raises(ValueError, match=r"target_modules \['proj'\] name no module of TransformerForCausalLM"):
        seqzoo.peft_config(build("transformer", "causal-lm"), target_modules=["q_proj", "proj"])
    # peft refuses a string target_parameters itself, with a clear message; it is not read letter by letter here
    with pytest.raises(TypeError, match=r"`target_parameters` must be a list of strings"):
        seqzoo.peft_config(lstm, target_parameters="weight_hh")


def test_peft_config_names_the_extra_it_needs(monkeypatch):
    """peft is the optional peft extra: without it, peft_config failed with a bare "No module named 'peft'"."""
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"seqzoo.peft_config needs peft.*pip install 'seqzoo\[peft\]'"):
        seqzoo.peft_config(build("lstm", "causal-lm"))


def test_the_documented_defaults():
    """peft_config's docstring promises LoRA with r=8, alpha=16 and no dropout, and a soft prompt of 8 tokens."""
    model = build("transformer", "causal-lm")
    lora = seqzoo.peft_config(model)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (8, 16, 0.0)
    assert seqzoo.peft_config(model, "prompt_tuning").num_virtual_tokens == 8


def lora_wrapped(arch: str, config) -> set[str]:
    """The modules peft wraps in a fresh ``arch`` causal LM with ``config`` (Linear layers, not ParamWrapper)."""
    model = get_peft_model(build(arch, "causal-lm"), config)
    return {name.removeprefix("base_model.model.") for name, module in model.named_modules()
            if isinstance(module, LoraLayer) and not isinstance(module, ParamWrapper)}


@pytest.mark.parametrize("arch", ["transformer", "mamba", "rwkv7", "hybrid"])
def test_the_default_target_modules_are_what_peft_all_linear_wraps(arch):
    """peft's own "all-linear" (every Linear layer but the output layer) wraps the modules seqzoo's default
    target_modules wrap; those are listed by their last components, sorted (one name per kind of layer, whatever the
    depth). A string target_modules is peft's (a shorthand or a regular expression), and exclude_modules beside it
    is checked against the modules it adapts."""
    model = build(arch, "causal-lm")
    default = lora_wrapped(arch, seqzoo.peft_config(model))
    assert default and default == lora_wrapped(arch, seqzoo.peft_config(model, target_modules="all-linear"))
    assert seqzoo.peft_targets(model)["target_modules"] == sorted({name.rpartition(".")[2] for name in default})
    first = seqzoo.peft_targets(model)["target_modules"][0]
    kept = lora_wrapped(arch, seqzoo.peft_config(model, target_modules="all-linear", exclude_modules=[first]))
    assert kept == {name for name in default if name.rpartition(".")[2] != first}


def test_an_exclude_modules_name_is_matched_by_whole_components():
    """peft matches target_modules=["1.mlp.up_proj"] to layer 1's up_proj alone (whole name components), not to
    layer 11's: an exclude_modules name for layer 11 excludes nothing, and is refused."""
    def fresh():
        torch.manual_seed(0)
        return seqzoo.get_architecture("transformer").heads["causal-lm"](
            tiny_config(smallest_preset("transformer"), num_hidden_layers=12))

    with pytest.raises(ValueError, match=r"exclude_modules \['layers.11.mlp.up_proj'\] name no module that "
                                         r"target_modules adapts"):
        seqzoo.peft_config(fresh(), target_modules=["1.mlp.up_proj"], exclude_modules=["layers.11.mlp.up_proj"])
    model = get_peft_model(fresh(), seqzoo.peft_config(fresh(), target_modules=["1.mlp.up_proj"]))
    assert {name for name, m in model.named_modules() if isinstance(m, LoraLayer)} == {
        "base_model.model.model.layers.1.mlp.up_proj"}


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_peft_config_of_a_model_that_holds_adapters_is_refused_and_its_first_config_adds_a_second(arch):
    """peft_config on an adapted model listed the adapters' own modules (lora_A, base_layer) as targets."""
    import copy

    model = build(arch, "causal-lm")
    config = seqzoo.peft_config(model)
    adapted = get_peft_model(model, copy.deepcopy(config))
    for target in (adapted, adapted.base_model.model):
        with pytest.raises(ValueError, match=rf"{type(target).__name__} already holds peft adapters: call "
                                             r"seqzoo.peft_config on the model before peft.get_peft_model"):
            seqzoo.peft_config(target)
    adapted.add_adapter("second", copy.deepcopy(config))  # what the message offers
    first = {name for name, _ in adapted.named_parameters() if ".default" in name}
    assert {name.replace(".second", ".default") for name, _ in adapted.named_parameters() if ".second" in name} == first


@pytest.mark.parametrize("arch", ["gru", "transformer", "mamba2", "hybrid"])
def test_a_peft_model_generates_what_its_merged_model_generates(arch):
    model = get_peft_model(build(arch, "causal-lm"), seqzoo.peft_config(build(arch, "causal-lm"),
                                                                       init_lora_weights=False))
    prompt = {"input_ids": IDS[:, :5], "attention_mask": MASK[:, :5]}
    with torch.no_grad():
        adapted = model.generate(**prompt, max_new_tokens=4, do_sample=False)
        merged = model.merge_and_unload().generate(**prompt, max_new_tokens=4, do_sample=False)
        plain = build(arch, "causal-lm").generate(**prompt, max_new_tokens=4, do_sample=False)
    assert torch.equal(adapted, merged)
    assert not torch.equal(adapted, plain)  # the adapter (random, not zero-initialised) takes part in decoding


def prompted_logits(base: nn.Module, prompt: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What a soft prompt means, computed without peft: the prompt's embeddings before every row's token
    embeddings, the attention mask extended with ones over them (peft returns the logits of every position)."""
    embeds = base.get_input_embeddings()(ids)
    rows = prompt[None].expand(ids.shape[0], -1, -1)
    full_mask = torch.cat([torch.ones(ids.shape[0], prompt.shape[0], dtype=mask.dtype), mask], dim=1)
    with torch.no_grad():
        return base(inputs_embeds=torch.cat([rows, embeds], dim=1), attention_mask=full_mask).logits


PROMPT_CASES = [(arch, "causal-lm") for arch in ARCHITECTURES] + [
    ("lstm", "sequence-classification"), ("mamba", "sequence-classification")]


@pytest.mark.parametrize("arch, task", PROMPT_CASES)
def test_prompt_tuning_with_no_arguments_trains_a_soft_prompt_on_every_architecture(arch, task, tmp_path):
    """Prompt tuning, the method that reaches the classic RNN/LSTM/GRU as well as the block models without a Linear
    layer to wrap: only the prompt trains, the logits are those of the prompt's embeddings placed before the
    tokens (computed here without peft), and the adapter saves and loads."""
    config = seqzoo.peft_config(build(arch, task), "prompt_tuning")
    model = get_peft_model(build(arch, task), config)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("prompt_encoder" in name or "classifier" in name or "score" in name for name in trainable)
    train_step(model, task)
    prompt = model.get_prompt_embedding_to_save("default").detach()
    assert prompt.shape == (config.num_virtual_tokens, build(arch, task).config.embedding_dim)
    expected = prompted_logits(model.get_base_model(), prompt, IDS, MASK)
    torch.testing.assert_close(logits(model), expected, rtol=1e-5, atol=1e-5)
    real_tokens = logits(model)[:, -IDS.shape[1]:] if task != "sequence-classification" else logits(model)
    assert not torch.allclose(real_tokens, logits(build(arch, task)), atol=1e-4)  # the prompt is read

    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(build(arch, task), tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(loaded), logits(model), rtol=1e-5, atol=1e-5)


def test_a_soft_prompt_is_as_wide_as_the_embedding_and_as_long_as_asked():
    """A classic LM's embedding may be narrower than its hidden state (embedding_size): the soft prompt has the
    embedding's width, as the token embeddings it is placed before have; num_virtual_tokens is the caller's."""
    def fresh():
        torch.manual_seed(0)
        return seqzoo.get_architecture("lstm").heads["causal-lm"](
            tiny_config(smallest_preset("lstm"), embedding_size=24, tie_word_embeddings=False)).eval()

    model = get_peft_model(fresh(), seqzoo.peft_config(fresh(), "prompt_tuning", num_virtual_tokens=3))
    train_step(model, "causal-lm")
    prompt = model.get_prompt_embedding_to_save("default").detach()
    assert prompt.shape == (3, 24)
    torch.testing.assert_close(logits(model), prompted_logits(fresh(), prompt, IDS, MASK), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["lstm", "rwkv7", "hybrid"])
def test_a_prompt_tuned_model_generates_by_greedy_recompute(arch):
    """peft feeds the prompt's embeddings on the first step and decodes from the cache after it; each token must
    be the argmax of a full recompute over prompt + tokens so far."""
    model = get_peft_model(build(arch, "causal-lm"), seqzoo.peft_config(build(arch, "causal-lm"), "prompt_tuning"))
    model.eval()
    ids, mask = IDS[:, :5], MASK[:, :5]
    with torch.no_grad():
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    prompt = model.get_prompt_embedding_to_save("default").detach()
    tokens = ids
    for _ in range(4):
        full_mask = torch.cat([mask, torch.ones(2, tokens.shape[1] - ids.shape[1], dtype=mask.dtype)], dim=1)
        step = prompted_logits(model.get_base_model(), prompt, tokens, full_mask)[:, -1].argmax(-1)
        tokens = torch.cat([tokens, step[:, None]], dim=1)
    assert torch.equal(generated[:, -4:], tokens[:, -4:])


@pytest.mark.parametrize("preset", ["seq2seq-sutskever-tiny", "seq2seq-bahdanau-tiny", "seq2seq-luong-general-tiny"])
def test_lora_with_no_arguments_on_the_recurrent_encoder_decoders(preset, tmp_path):
    """The recurrent encoder reads its final states with peft's wrapper around each layer, and the Bahdanau bridge's
    Linear layers (named 0, 1, ... in a ModuleList, like the recurrent layers) are targeted by their full names."""
    def fresh():
        torch.manual_seed(0)
        return seqzoo.create_model(preset).eval()

    source, target = IDS, IDS[:, :4]
    kwargs = dict(input_ids=source, attention_mask=MASK, decoder_input_ids=target)
    model = get_peft_model(fresh(), seqzoo.peft_config(fresh(), init_lora_weights=False)).eval()
    adapted = {name.removeprefix("base_model.model.") for name, module in model.named_modules()
               if isinstance(module, LoraLayer) and not isinstance(module, ParamWrapper)}
    assert adapted == {name for name, module in fresh().named_modules()
                       if isinstance(module, nn.Linear) and name != "lm_head"}
    with torch.no_grad():
        expected = model(**kwargs).logits
        assert not torch.allclose(expected, fresh()(**kwargs).logits, atol=1e-4)
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(fresh(), tmp_path / "adapter").eval()
    merged = loaded.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(**kwargs).logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("preset", ["seq2seq-bahdanau-tiny", "seq2seq-transformer-tiny"])
def test_prompt_tuning_an_encoder_decoder_prompts_its_source(preset, tmp_path):
    """The soft prompt sits before every source: the logits are the model's on the prompt's embeddings followed by
    the source's (computed here without peft), the decoder's inputs unchanged; generate() reads it too."""
    def fresh():
        torch.manual_seed(0)
        return seqzoo.create_model(preset).eval()

    model = get_peft_model(fresh(), seqzoo.peft_config(fresh(), "prompt_tuning")).eval()
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.normal_()  # a prompt that changes the answer
    target = IDS[:, :4]
    with torch.no_grad():
        got = model(input_ids=IDS, attention_mask=MASK, decoder_input_ids=target).logits
    base = model.get_base_model()
    prompt = model.get_prompt_embedding_to_save("default").detach()
    embeds = torch.cat([prompt[None].expand(2, -1, -1), base.get_input_embeddings()(IDS)], dim=1)
    full_mask = torch.cat([torch.ones(2, prompt.shape[0], dtype=MASK.dtype), MASK], dim=1)
    with torch.no_grad():
        expected = base(inputs_embeds=embeds, attention_mask=full_mask, decoder_input_ids=target).logits
        plain = fresh()(input_ids=IDS, attention_mask=MASK, decoder_input_ids=target).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-4)
    generated = model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=3, do_sample=False)
    assert generated.shape[0] == 2
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(fresh(), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS, attention_mask=MASK, decoder_input_ids=target).logits, got)


def test_the_mixers_of_a_model_loaded_from_its_bundle_are_found(tmp_path):
    """A model loaded with trust_remote_code=True before seqzoo is imported has the bundle's copy of Mixer, another
    class: peft_targets and int8_targets left its recurrent weights out without a word (quantize_int8 then kept them
    in float)."""
    import subprocess
    import sys

    from seqzoo.cli import main as seqzoo_main

    assert seqzoo_main(["new", "gru-tiny", str(tmp_path / "gru")]) == 0
    script = (
        "import sys\n"
        "from transformers import AutoModelForCausalLM\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "assert type(model).__module__.startswith('transformers_modules')  # the bundle's classes\n"
        "from seqzoo.adapters import peft_targets\n"
        "from seqzoo.quantization import int8_targets\n"
        "print(sorted(peft_targets(model)['target_parameters']), int8_targets(model))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "gru")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        "['weight_hh', 'weight_ih'] ['model.layers.0.weight_ih', 'model.layers.0.weight_hh', "
        "'model.layers.1.weight_ih', 'model.layers.1.weight_hh', 'lm_head']")


@pytest.mark.parametrize("arch, targets", [
    ("rwkv7", {"target_parameters": ["x_rr"]}),  # next to the default target_modules, which match
    ("lstm", {"target_modules": ["lm_head"], "target_parameters": ["weight_hx"]}),
    ("gru", {"target_parameters": ["weight_hh", "weight_hx"]}),  # one of two matches
    ("lstm", {"target_parameters": ["hh"]}),  # a part of a name: peft compares whole components
])
def test_a_misspelt_target_parameter_is_refused(arch, targets):
    """peft raises only where nothing at all is matched: a misspelt parameter name next to names that match adapted
    nothing of it, without a word."""
    model = build(arch, "causal-lm")
    with pytest.raises(ValueError, match=rf"target_parameters \['(x_rr|weight_hx|hh)'\] name no parameter of "
                                         rf"{type(model).__name__}.*seqzoo.peft_targets"):
        seqzoo.peft_config(model, **targets)
    # A parameter's own name, or a full name's last components, as peft matches them.
    name = next(n for n, _ in model.named_parameters() if n.endswith(".w1" if arch == "rwkv7" else ".weight_hh"))
    # (RWKV-7's w1 sits above its adapted receptance: adapted alone here, see the test below for the pair)
    alone = {"target_modules": []} if arch == "rwkv7" else {}
    for given in (name, name.partition(".")[2], name.rpartition(".")[2]):
        config = seqzoo.peft_config(model, target_parameters=[given], **alone)
        wrapped = get_peft_model(build(arch, "causal-lm"), config)
        assert any(isinstance(m, ParamWrapper) for m in wrapped.modules())


@pytest.mark.parametrize("arch, parameter, module", [("rwkv7", "w1", "receptance"), ("mamba", "A_log", "in_proj")])
def test_a_parameter_above_an_adapted_module_is_adapted_where_peft_can_and_refused_where_it_cannot(arch, parameter,
                                                                                                   module):
    """peft 0.22 adapts target_parameters before target_modules: a parameter of a module above an adapted one
    (RWKV-7's w1 beside its receptance) made get_peft_model fail inside peft ("ParamWrapper has no attribute
    'receptance'"); 0.21 adapted both. Judged against peft itself, not its version: the bare LoraConfig is tried."""
    from peft import LoraConfig

    from seqzoo.adapters import peft_targets

    targets = peft_targets(build(arch, "causal-lm"))
    bare = LoraConfig(r=4, target_modules=targets["target_modules"], target_parameters=[parameter])
    try:
        get_peft_model(build(arch, "causal-lm"), bare)
    except AttributeError as err:
        assert module in str(err)
        with pytest.raises(ValueError, match=rf"target_parameters adapt model.layers.0.\w+.{parameter}, a parameter of "
                                             rf"model.layers.0.\w+, and target_modules adapt .*\.{module} inside it.*"
                                             r"separate adapters"):
            seqzoo.peft_config(build(arch, "causal-lm"), target_parameters=[parameter])
    else:  # (peft adapts both: so does seqzoo's config)
        wrapped = get_peft_model(build(arch, "causal-lm"),
                                 seqzoo.peft_config(build(arch, "causal-lm"), target_parameters=[parameter]))
        assert any(isinstance(m, ParamWrapper) for m in wrapped.modules())
        assert any(isinstance(m, LoraLayer) and n.endswith(module) for n, m in wrapped.named_modules())
    # target_modules naming no module inside the parameter's module: no conflict
    seqzoo.peft_config(build(arch, "causal-lm"), target_parameters=[parameter], target_modules=["lm_head"])


def test_the_refusal_of_a_parameter_above_an_adapted_module_names_a_route_that_trains_both(monkeypatch):
    """The refusal (made here whatever peft is installed) names two adapters, both configs made before
    get_peft_model: that route adapts the parameter and the modules, and a step trains both adapters."""
    import seqzoo.adapters as adapters

    monkeypatch.setattr(adapters, "_peft_adapts_modules_below_parameters", lambda: False)
    model = build("rwkv7", "causal-lm")
    with pytest.raises(ValueError, match=r"peft \S+ wraps model.layers.0.attn for its parameter first") as refused:
        seqzoo.peft_config(model, target_parameters=["w1"])
    assert "add_adapter('on_parameters', parameters)" in str(refused.value)
    modules = seqzoo.peft_config(model, target_parameters=[])
    parameters = seqzoo.peft_config(model, target_modules=[], target_parameters=["w1"])
    peft_model = get_peft_model(model, modules)
    peft_model.add_adapter("on_parameters", parameters)
    peft_model.base_model.set_adapter(["default", "on_parameters"])
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_B" in n}
    assert any(".on_parameters" in n for n in before) and any(".default" in n for n in before)
    train_step(peft_model, "causal-lm")
    changed = {n for n, p in peft_model.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert any(".on_parameters" in n for n in changed) and any("receptance.lora_B.default" in n for n in changed)


def test_a_peft_that_refuses_the_pair_in_its_own_words_has_it_refused_by_seqzoo(monkeypatch):
    """The probe takes any error of peft's on its toy model as "cannot adapt the pair" (0.22 fails with an
    AttributeError; a later peft refusing the pair with a ValueError would otherwise stop peft_config in the probe,
    with peft's message about the toy model, for every config that holds both target lists)."""
    import peft

    import seqzoo.adapters as adapters

    def refuses(config, model, *args, **kwargs):
        raise ValueError("target_parameters and target_modules overlap in module 'holder'")

    monkeypatch.setattr(peft, "inject_adapter_in_model", refuses)
    adapters._peft_adapts_modules_below_parameters.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"wraps model.layers.0.attn for its parameter first.*separate adapters"):
            seqzoo.peft_config(build("rwkv7", "causal-lm"), target_parameters=["w1"])
    finally:
        adapters._peft_adapts_modules_below_parameters.cache_clear()  # (judged again with the real peft)


@pytest.mark.parametrize("arch, overrides, refused", [
    ("gru", {"modules_to_save": ["lm_hed"]}, r"modules_to_save \['lm_hed'\] name no module of GRUForCausalLM \(peft "
                                             r"matches the end of a module's full name\); its top-level modules are "
                                             r"\['model', 'lm_head'\]"),
    ("gru", {"modules_to_save": ["lm_head", "embed_tokns"]}, r"modules_to_save \['embed_tokns'\]"),  # one of two
    ("gru", {"modules_to_save": "lm_head"}, r"modules_to_save must be a list of module names, got the string "
                                            r"'lm_head'"),
    ("transformer", {"exclude_modules": ["q_proj", "k_prj"]}, r"exclude_modules \['k_prj'\] name no module that "
                                                              r"target_modules adapts in TransformerForCausalLM"),
    # a module above the adapted ones: peft compares the adapted module's own name, and excluded nothing of layer 1
    ("transformer", {"exclude_modules": ["layers.1"]}, r"exclude_modules \['layers.1'\] .*such as "
                                                       r"'model.layers.0.self_attn.q_proj'.*not a module above it"),
    ("transformer", {"target_modules": ["q_proj"], "exclude_modules": ["proj"]}, r"\['proj'\]"),  # not a component
    # peft does not apply the list to target_parameters (the classic cells' defaults)
    ("gru", {"exclude_modules": ["layers.1"]}, r"does not apply to target_parameters"),
    # target_modules=None: peft looks the model type up in its own table, which has no seqzoo type, and adapts no
    # module; the exclusion was accepted, and layer 1's recurrent weights stayed adapted
    ("gru", {"target_modules": None, "exclude_modules": ["layers.1"]}, r"an adapted module's full name or its last "
                                                                       r"components.*does not apply to target_param"),
    # a string target_modules: "all-linear" or a regular expression; the exclusion was checked against every module
    # and accepted, and peft excluded nothing (layer 1 above its layers, the output layer never adapted)
    ("transformer", {"target_modules": "all-linear", "exclude_modules": ["layers.1"]}, r"\['layers.1'\] .*such as "
                                                                                     r"'model.layers.0.self_attn"),
    ("transformer", {"target_modules": "all-linear", "exclude_modules": ["lm_head"]}, r"\['lm_head'\]"),
    ("transformer", {"target_modules": r".*\.layers\.1\..*_proj", "exclude_modules": ["layers.0.mlp.up_proj"]},
     r"\['layers.0.mlp.up_proj'\] .*such as 'model.layers.1.self_attn.q_proj'"),
])
def test_a_misspelt_module_to_save_or_exclude_is_refused(arch, overrides, refused):
    """peft says nothing of a modules_to_save name that matches no module (the module it meant stays frozen), nor of
    an exclude_modules name beside one that excludes something; a string modules_to_save it reads letter by letter."""
    model = build(arch, "causal-lm")
    with pytest.raises(ValueError, match=refused):
        seqzoo.peft_config(model, **overrides)
    if "exclude_modules" in overrides and arch == "transformer":  # (IA3 scales nn.Linear layers only)
        with pytest.raises(ValueError, match=refused):
            seqzoo.peft_config(model, method="ia3", **overrides)


@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("overrides, refused", [
    ({"target_modules": "(.*q_proj"}, r"target_modules='\(\.\*q_proj' is not a valid regular expression \(missing \)"),
    ({"exclude_modules": "layers[0-"}, r"exclude_modules='layers\[0-' is not a valid regular expression"),
    ({"target_modules": "(.*proj", "exclude_modules": ["q_proj"]}, r"target_modules='\(\.\*proj' is not a valid"),
])
def test_a_string_target_or_exclude_that_is_no_regular_expression_is_refused(method, overrides, refused):
    """peft compiles a string target_modules / exclude_modules only in get_peft_model, and its re.error ("missing ),
    unterminated subpattern at position 0") named neither the key nor the value."""
    with pytest.raises(ValueError, match=refused):
        seqzoo.peft_config(build("transformer", "causal-lm"), method, **overrides)


def test_all_linear_on_a_classifier_adapts_no_score_layer_and_excluding_it_is_refused():
    """peft's "all-linear" leaves a sequence classifier's score layer out (it trains it in full): an exclude_modules
    naming it excludes nothing, which seqzoo's check knows."""
    model = build("transformer", "sequence-classification")
    wrapped = get_peft_model(build("transformer", "sequence-classification"),
                             seqzoo.peft_config(model, target_modules="all-linear"))
    adapted = {name for name, module in wrapped.named_modules() if isinstance(module, LoraLayer)}
    assert adapted and not any("score" in name for name in adapted)
    with pytest.raises(ValueError, match=r"exclude_modules \['score'\] name no module that target_modules adapts"):
        seqzoo.peft_config(model, target_modules="all-linear", exclude_modules=["score"])


@pytest.mark.parametrize("arch, overrides, saved, excluded", [
    ("gru", {"modules_to_save": ["embed_tokens"]}, "model.embed_tokens", None),  # peft: the end of the full name
    ("gru", {"modules_to_save": ["model.embed_tokens"]}, "model.embed_tokens", None),
    ("transformer", {"exclude_modules": ["layers.1.self_attn.q_proj"]}, None, "model.layers.1.self_attn.q_proj"),
    ("transformer", {"exclude_modules": ["q_proj"]}, None, "model.layers.0.self_attn.q_proj"),
    ("transformer", {"exclude_modules": "model\\.layers\\.1\\..*"}, None, "model.layers.1.mlp.up_proj"),  # a regex
    ("transformer", {"target_modules": r".*\.layers\.1\..*_proj", "exclude_modules": ["up_proj"]}, None,
     "model.layers.1.mlp.up_proj"),
    ("transformer", {"target_modules": "all-linear", "exclude_modules": ["layers.1.mlp.up_proj"]}, None,
     "model.layers.1.mlp.up_proj"),
    # peft's classifiers add "classifier" and "score" to the list themselves: either is taken (seqzoo's is score)
    ("gru", {"modules_to_save": ["classifier"], "task": "sequence-classification"}, "model.score", None),
    ("transformer", {"modules_to_save": ["score", "classifier"], "task": "token-classification"}, "model.score",
     None),
])
def test_module_lists_as_peft_matches_them_are_accepted(arch, overrides, saved, excluded):
    overrides = dict(overrides)
    model = build(arch, overrides.pop("task", "causal-lm"))
    wrapped = get_peft_model(model, seqzoo.peft_config(model, **overrides))
    names = [name for name, _ in wrapped.named_modules()]
    if saved:
        assert any(name.endswith(f"{saved}.modules_to_save") for name in names), names
    if excluded:
        assert not any(f"{excluded}.lora_A" in name for name in names), names
        assert any(".lora_A" in name for name in names), names


@pytest.mark.parametrize("task", ["causal-lm", "sequence-classification"])
def test_prompt_tuning_checks_modules_to_save_too(task):
    # It was not checked: a string was read letter by letter (causal LM), or failed inside peft's classifier with
    # "'str' object has no attribute 'extend'"; a misspelt name left the module frozen.
    model = build("gru", task)
    with pytest.raises(ValueError, match=r"modules_to_save must be a list of module names, got the string"):
        seqzoo.peft_config(model, method="prompt_tuning", modules_to_save="lm_head")
    with pytest.raises(ValueError, match=r"modules_to_save \['lm_hed'\] name no module"):
        seqzoo.peft_config(model, method="prompt_tuning", modules_to_save=["lm_hed"])


@pytest.mark.parametrize("method, overrides, refused, hint", [
    ("lora", {"rank": 16}, "rank", ""),
    ("ia3", {"r": 4}, "r", ""),  # (IA3 has no rank: LoRA's argument)
    ("lora", {"dropout": 0.1}, "dropout", "Did you mean 'lora_dropout'"),
    ("prompt_tuning", {"num_virtual_token": 4}, "num_virtual_token", "Did you mean 'num_virtual_tokens'"),
    ("lora", {"peft_type": "IA3"}, "peft_type", ""),  # (peft sets it from the config class, ignoring the one given)
])
def test_an_override_the_peft_config_does_not_take_is_refused_naming_those_it_takes(method, overrides, refused, hint):
    """peft's TypeError ("LoraConfig.__init__() got an unexpected keyword argument 'rank'") named no argument it
    takes, and a peft_type was taken and silently replaced."""
    with pytest.raises(ValueError, match=rf"{method} takes no argument {refused!r}.*{hint}.* It takes .*task_type"):
        seqzoo.peft_config(build("gru", "causal-lm"), method, **overrides)


@pytest.mark.parametrize("method, overrides, message", [
    ("lora", {"r": "8"}, "lora: r='8' must be an integer (peft's LoraConfig)"),  # (failed inside peft's layer)
    ("lora", {"r": True}, "lora: r=True must be an integer"),
    ("lora", {"lora_dropout": "0.1"}, "lora: lora_dropout='0.1' must be a number"),
    ("lora", {"use_rslora": 1}, "lora: use_rslora=1 must be true or false"),
    ("lora", {"bias": 0}, "lora: bias=0 must be a string"),
    # (1 is no bool: peft's annotation is a bool or a name; it was taken, as True, on Linear layers)
    ("lora", {"init_lora_weights": 1}, "lora: init_lora_weights=1 must be true or false or a string"),
    ("prompt_tuning", {"num_virtual_tokens": 8.0}, "prompt_tuning: num_virtual_tokens=8.0 must be an integer"),
])
def test_an_override_of_the_wrong_type_is_refused(method, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        seqzoo.peft_config(build("gru", "causal-lm"), method, **overrides)
    # Of the right types, and of an annotation this does not check (a list of layers), they pass the type check.
    seqzoo.peft_config(build("gru", "causal-lm"), "lora", r=4, lora_alpha=8, lora_dropout=0, init_lora_weights=False)


@pytest.mark.parametrize("overrides", [{"layers_to_transform": [0]},
                                       {"layers_to_transform": 0, "layers_pattern": "layers"}])
def test_layers_to_transform_with_target_parameters_is_refused(overrides):
    """peft applies layers_to_transform to target_modules only: a classic cell's recurrent weights (the default
    target_parameters) were adapted in every layer, the argument ignored without a word."""
    gru = build("gru", "causal-lm")
    with pytest.raises(ValueError, match=r"layers_to_transform.*not to target_parameters \['weight_hh', 'weight_ih'\]"
                                         r".*target_parameters=\['model.layers.0.weight_hh'"):
        seqzoo.peft_config(gru, **overrides)
    # the way the message gives: full names pick the layers
    config = seqzoo.peft_config(gru, target_parameters=["layers.0.weight_hh", "layers.0.weight_ih"])
    model = get_peft_model(gru, config)
    adapted = {name for name, module in model.named_modules() if isinstance(module, ParamWrapper)}
    assert adapted and all(".layers.0" in name for name in adapted)
    # a block model's defaults have no target_parameters: peft picks its layers
    seqzoo.peft_config(build("transformer", "causal-lm"), layers_to_transform=[0])


@pytest.mark.parametrize("overrides, refused", [
    ({"bias": "all"}, r"bias='all' trains the parameters whose names end in '.bias', which the recurrent cells'"),
    ({"bias": "lora_only"}, r"bias='lora_only' trains"),
    ({"init_lora_weights": "pissa"}, r"init_lora_weights='pissa' initialises from a layer's weight.*True, False or "
                                     r"'gaussian'"),
    ({"init_lora_weights": "olora"}, r"init_lora_weights='olora'"),
    ({"init_lora_weights": "corda"}, r"init_lora_weights='corda'"),
])
def test_options_lora_on_a_cells_weights_does_not_apply_are_refused(overrides, refused):
    # bias="all" trained the head's bias alone (the cells' bias_ih / bias_hh are no "*.bias"); the weight-based
    # initialisations failed inside peft with "'GRUMixer' object has no attribute 'weight'".
    gru = build("gru", "causal-lm")
    with pytest.raises(ValueError, match=refused):
        seqzoo.peft_config(gru, **overrides)
    for init in (True, False, "gaussian"):
        get_peft_model(build("gru", "causal-lm"), seqzoo.peft_config(gru, init_lora_weights=init))
    # without the cells' weights (a block model's Linear layers, or target_parameters=[]) peft takes them
    assert seqzoo.peft_config(build("transformer", "causal-lm"), **overrides).task_type == "CAUSAL_LM"
    assert seqzoo.peft_config(gru, target_parameters=[], target_modules=["lm_head"], **overrides)


@pytest.mark.parametrize("arch, option, key, refused", [
    ("transformer", "rank_pattern", "q_prj", r"rank_pattern key 'q_prj' matches no module or parameter of "
                                             r"TransformerForCausalLM \(did you mean 'q_proj'\?\)"),
    ("transformer", "alpha_pattern", "layers.9.self_attn.q_proj", "alpha_pattern key 'layers.9.self_attn.q_proj' "
                                                                  "matches no module"),
    ("gru", "rank_pattern", "weight_hhh", r"\(did you mean 'weight_hh'\?\)"),
    ("transformer", "rank_pattern", "proj", "rank_pattern key 'proj' matches no module"),  # (a name's whole end)
    ("transformer", "rank_pattern", "q_proj(", r"rank_pattern key 'q_proj\(' is not a valid regular expression"),
])
def test_a_rank_or_alpha_pattern_key_that_matches_nothing_is_refused(arch, option, key, refused):
    # peft kept r / lora_alpha for every layer where a key matched none, without a word
    model = build(arch, "causal-lm")
    with pytest.raises(ValueError, match=refused):
        seqzoo.peft_config(model, **{option: {key: 2}})


@pytest.mark.parametrize("arch, key, adapted", [
    ("transformer", "q_proj", "layers.0.self_attn.q_proj"),
    ("transformer", r"layers\.1\.mlp\.up_proj", "layers.1.mlp.up_proj"),
    ("gru", "weight_hh", "layers.0"),  # (a cell's parameter: peft matches "layers.0.weight_hh")
    ("gru", "layers.1.weight_hh", "layers.1"),
])
def test_rank_pattern_keys_as_peft_matches_them_are_taken_and_applied(arch, key, adapted):
    model = build(arch, "causal-lm")
    peft_model = get_peft_model(model, seqzoo.peft_config(model, rank_pattern={key: 2}))
    ranks = {name.removeprefix("base_model.model.model.").split(".lora_A")[0]: p.shape[0]
             for name, p in peft_model.named_parameters() if ".lora_A." in name}
    assert ranks[adapted] == 2 and 8 in ranks.values()


@pytest.mark.parametrize("arch", ["gru", "transformer"])
@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_a_model_quantised_by_torch_is_refused_as_one_no_adapter_could_train(arch, method):
    # torch's quantize_dynamic: its int8 modules have no autograd, so no adapter got a gradient (LoRA on a
    # Transformer failed in peft with "No `target_modules` passed but also no `target_parameters` found").
    quantised = torch.ao.quantization.quantize_dynamic(build(arch, "causal-lm"), {nn.Linear}, dtype=torch.qint8)
    with pytest.raises(ValueError, match=r"is quantised \(\S+ is a torch.ao.nn.quantized.dynamic.modules.linear.Linear"
                                         r"[;)].*no gradient to their inputs"):
        seqzoo.peft_config(quantised, method)
    assert "_packed_params" not in str(pytest.raises(ValueError, seqzoo.peft_config, quantised, method).value)


@pytest.mark.parametrize("key, value, refused", [
    ("num_virtual_tokens", 0, "must be a positive integer"),  # (a prompt of no token: nothing to train, no word)
    ("num_virtual_tokens", -1, "must be a positive integer"),  # (torch: "negative dimension -1")
    ("num_virtual_tokens", 2.5, "must be an integer"),  # (by peft's annotation, before the size is read)
    ("num_virtual_tokens", True, "must be an integer"),
    ("token_dim", 5, r"must be the width of GRUForCausalLM's input embeddings, \d+"),  # ("Sizes of tensors must match")
    ("num_transformer_submodules", 2, r"must be 1 for CAUSAL_LM"),  # (a mask that fits no input)
])
def test_prompt_tuning_sizes_that_cannot_run_are_refused(key, value, refused):
    with pytest.raises(ValueError, match=rf"prompt_tuning: {key}={value!r} {refused}"):
        seqzoo.peft_config(build("gru", "causal-lm"), "prompt_tuning", **{key: value})
    assert seqzoo.peft_config(build("gru", "causal-lm"), "prompt_tuning", num_virtual_tokens=3).num_virtual_tokens == 3


@pytest.mark.parametrize("key", ["target_modules", "target_parameters", "modules_to_save", "exclude_modules"])
@pytest.mark.parametrize("value", [[1], ["lm_head", None], 5])
def test_a_name_list_holding_no_strings_is_refused(key, value):
    """target_modules=[1] matched "layers.1" here and failed in peft ("'int' object has no attribute 'split'");
    modules_to_save=[1] failed in seqzoo's own check ("endswith first arg must be str"); 5 was "not iterable"."""
    with pytest.raises(ValueError, match=rf"{key}={re.escape(repr(value))} must be a list of names \(strings\)"):
        seqzoo.peft_config(build("transformer", "causal-lm"), **{key: value})


@pytest.mark.parametrize("call", [seqzoo.peft_config, seqzoo.peft_targets])
def test_a_compiled_model_is_refused_naming_the_order_that_works(call):
    # peft adapts torch.compile's wrapper, but saves the adapter under '_orig_mod.' names that load onto no
    # uncompiled model (a warning of missing keys, the trained adapter lost); peft_targets listed the head's layers.
    model = tiny_model("gru-tiny")
    with pytest.raises(ValueError, match=r"OptimizedModule wraps GRUForCausalLM \(torch.compile or DDP\): call "
                                         r"seqzoo.peft_config and peft.get_peft_model on the model before "
                                         r"torch.compile, then compile the PeftModel"):
        call(torch.compile(model, backend="eager"))


def test_the_probe_of_peft_leaves_the_callers_random_stream_alone():
    """The one-time probe of peft's injection order builds a toy model on a generator of its own: it drew from the
    caller's, so a seeded get_peft_model after the process's first peft_config started from other LoRA weights."""
    import seqzoo.adapters as adapters

    adapters._peft_adapts_modules_below_parameters.cache_clear()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    adapters._peft_adapts_modules_below_parameters()
    assert torch.equal(torch.get_rng_state(), before)
