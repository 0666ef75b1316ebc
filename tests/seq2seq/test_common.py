"""The shared tests of the encoder-decoders: every seq2seq preset family (tests/conftest.py: SEQ2SEQ_FAMILIES) gets
the same checks -- gradients, labels, caches, generation, padding, attention weights, saving, Trainer."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from seqzoo.models.compat import CACHE_ALIASES, OUTPUT_CACHE_FIELD, output_cache
from seqzoo.models.seq2seq.configuration_seq2seq import Seq2SeqConfig
from seqzoo.models.seq2seq.modeling_seq2seq import shift_tokens_right
from tests.conftest import FAMILIES, SEQ2SEQ_FAMILIES, tiny_config, tiny_model
from tests.models.test_common import check_streaming
from tests.models.test_state_exactness import TOKENS, with_holes
from tests.seq2seq.test_reference import sinusoids

SOURCES = [[5, 17, 33, 8, 61, 12, 40], [9, 3, 77], [44, 21, 6, 90, 13]]  # odd, unequal lengths
NEW_TOKENS = 6


@pytest.fixture(params=sorted(SEQ2SEQ_FAMILIES), ids=sorted(SEQ2SEQ_FAMILIES))
def preset(request) -> str:
    return SEQ2SEQ_FAMILIES[request.param]


def padded(sources=SOURCES, side="left", pad_id=0):
    width = max(map(len, sources))
    ids = torch.full((len(sources), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, source in enumerate(sources):
        where = slice(width - len(source), width) if side == "left" else slice(0, len(source))
        ids[row, where], mask[row, where] = torch.tensor(source), 1
    return ids, mask


def greedy(model, ids, mask, **kwargs):
    out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                         output_logits=True, return_dict_in_generate=True, pad_token_id=0, **kwargs)
    return out.sequences, torch.stack(out.logits, dim=1)


def test_gradients_reach_every_parameter_and_the_encoder(preset):
    model = tiny_model(preset).train()
    ids, mask = padded()
    labels = torch.randint(3, 99, (3, 5))
    labels[1, 3:] = -100
    out = model(ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (3, 5, 99) and torch.isfinite(out.loss)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    encoder = [n for n, p in model.model.encoder.named_parameters() if not p.grad.abs().sum() > 0]
    assert not encoder, f"encoder parameters with zero gradient: {encoder}"


@pytest.mark.parametrize("preset", [SEQ2SEQ_FAMILIES[f] for f in sorted(SEQ2SEQ_FAMILIES)
                                    if f not in ("seq2seq-sutskever", "seq2seq-transformer")])
def test_gradients_reach_the_encoder_through_attention_alone(preset):
    model = tiny_model(preset, bridge="zeros").train()  # the decoder starts from zeros: no other path
    ids, mask = padded()
    model(ids, attention_mask=mask, labels=torch.randint(3, 99, (3, 5))).loss.backward()
    assert all(p.grad.abs().sum() > 0 for p in model.model.encoder.layers.parameters())


def test_loss_is_the_cross_entropy_of_the_labels_shifted_in(preset):
    model = tiny_model(preset)
    ids, mask = padded()
    labels = torch.randint(3, 99, (3, 5))
    labels[2, 2:] = -100
    out = model(ids, attention_mask=mask, labels=labels)
    start = model.config.decoder_start_token_id
    shifted = torch.cat([torch.full((3, 1), start), labels[:, :-1].masked_fill(labels[:, :-1] == -100, 0)], dim=1)
    logits = model(ids, attention_mask=mask, decoder_input_ids=shifted).logits
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits.reshape(-1, 99), labels.reshape(-1)))
    torch.testing.assert_close(model.prepare_decoder_input_ids_from_labels(labels), shifted)


def test_a_float64_models_loss_is_float64_and_a_compiled_forward_takes_labels(preset):
    # (the loss was float32: logits.float(); and torch.compile(fullgraph=True) failed on labels holding -100, whose
    # shift into decoder_input_ids read the tensor's values to decide whether to fill the pad token in)
    model = tiny_model(preset)
    ids, mask = padded()
    labels = torch.randint(3, 99, (3, 5))
    labels[2, 2:] = -100
    out = model.double()(ids, attention_mask=mask, labels=labels)
    assert out.loss.dtype == torch.float64
    assert out.loss.item() == F.cross_entropy(out.logits.reshape(-1, 99), labels.reshape(-1)).item()
    model.float()
    compiled = torch.compile(model, fullgraph=True, backend="eager")(ids, attention_mask=mask, labels=labels)
    eager = model(ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(compiled.loss, eager.loss)
    torch.testing.assert_close(compiled.logits, eager.logits)


def test_decoder_inputs_given_beside_labels_are_used_and_num_items_in_batch_divides_the_summed_loss(preset):
    """As transformers' seq2seq models: labels are shifted into decoder_input_ids only when none are given; under
    gradient accumulation (Trainer passes num_items_in_batch) the loss is the summed cross-entropy over that count."""
    model = tiny_model(preset)
    ids, mask = padded()
    labels = torch.randint(3, 99, (3, 5))
    labels[2, 3:] = -100
    decoder_input_ids = torch.randint(3, 99, (3, 5))
    out = model(ids, attention_mask=mask, decoder_input_ids=decoder_input_ids, labels=labels)
    logits = model(ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits.reshape(-1, 99), labels.reshape(-1)))
    summed = F.cross_entropy(logits.reshape(-1, 99), labels.reshape(-1), reduction="sum")
    for count in (7, torch.tensor(7)):
        loss = model(ids, attention_mask=mask, decoder_input_ids=decoder_input_ids, labels=labels,
                     num_items_in_batch=count).loss
        torch.testing.assert_close(loss, summed / 7)


def test_left_padded_labels_are_refused_not_shifted_into_pads():
    # DataCollatorForSeq2Seq pads labels on the tokenizer's side, and seqzoo's byte tokenizer pads on the left:
    # shifted, [-100, -100, y1, ...] would feed [start, pad, pad, y1, ...], which generation never sees.
    from transformers import DataCollatorForSeq2Seq

    from seqzoo.tokenizer import byte_tokenizer, tokenizer_for

    model = tiny_model(SEQ2SEQ_FAMILIES["seq2seq-bahdanau"])
    tokenizer = byte_tokenizer()
    features = [{"input_ids": [5, 6], "labels": [7, 2]}, {"input_ids": [5, 6, 7], "labels": [7, 8, 9, 2]}]
    with pytest.raises(ValueError, match="left-padded"):
        DataCollatorForSeq2Seq(tokenizer, model=model)(features)
    ids, mask = padded()
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] are left-padded"):
        model(ids, attention_mask=mask, labels=torch.tensor([[7, 8, 2], [-100, 7, 2], [7, 2, -100]]))
    # The tokenizer `seqzoo new` / `seqzoo train` save beside an encoder-decoder pads on the right: the collator
    # then builds what each pair alone gives.
    tokenizer = tokenizer_for(model.config)
    assert tokenizer.padding_side == "right" and tokenizer_for(tiny_config(FAMILIES["gru"])).padding_side == "left"
    batch = DataCollatorForSeq2Seq(tokenizer, model=model)(features)
    assert batch["labels"][0].tolist() == [7, 2, -100, -100]
    assert batch["decoder_input_ids"][0].tolist()[:2] == [model.config.decoder_start_token_id, 7]


def test_cached_decoding_equals_full_recompute(preset):
    model = tiny_model(preset)
    ids, mask = padded()
    target = torch.randint(3, 99, (3, 6))
    with torch.no_grad():
        full = model(ids, attention_mask=mask, decoder_input_ids=target).logits
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)
        out = model(attention_mask=mask, encoder_outputs=encoded, decoder_input_ids=target[:, :2], use_cache=True)
        pieces, cache = [out.logits], output_cache(out)
        for t in range(2, 6):
            out = model(attention_mask=mask, encoder_outputs=encoded, decoder_input_ids=target[:, t:t + 1],
                        cache=cache)
            pieces.append(out.logits)
            cache = output_cache(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == 6


def test_a_decoder_cache_passed_is_returned_advanced_whatever_use_cache_says(preset):
    # The cache passed was advanced in place but not returned under use_cache=False, unlike the causal LMs'.
    model = tiny_model(preset)
    ids, mask = padded()
    target = torch.randint(3, 99, (3, 4))
    with torch.no_grad():
        full = model(ids, attention_mask=mask, decoder_input_ids=target).logits
        cache = output_cache(model(ids, attention_mask=mask, decoder_input_ids=target[:, :2], use_cache=True))
        out = model(ids, attention_mask=mask, decoder_input_ids=target[:, 2:], cache=cache, use_cache=False)
    assert output_cache(out) is cache and cache.get_seq_length() == 4
    torch.testing.assert_close(out.logits, full[:, 2:], rtol=1e-5, atol=1e-5)


def test_greedy_generation_with_cache_equals_without(preset):
    model = tiny_model(preset)
    ids, mask = padded()
    tokens, logits = greedy(model, ids, mask)
    assert tokens.shape == (3, NEW_TOKENS + 1) and (tokens[:, 0] == model.config.decoder_start_token_id).all()
    uncached, uncached_logits = greedy(model, ids, mask, use_cache=False)
    assert torch.equal(tokens, uncached)
    torch.testing.assert_close(logits, uncached_logits, rtol=1e-5, atol=1e-5)


def test_beam_search_with_cache_equals_without(preset):
    model = tiny_model(preset)
    ids, mask = padded()
    kwargs = dict(attention_mask=mask, max_new_tokens=NEW_TOKENS, num_beams=3, num_return_sequences=2,
                  do_sample=False, pad_token_id=0, eos_token_id=None)
    cached = model.generate(ids, **kwargs)
    assert cached.shape == (6, NEW_TOKENS + 1)
    assert torch.equal(cached, model.generate(ids, use_cache=False, **kwargs))


def test_the_encoder_runs_once_per_generate(preset):
    model = tiny_model(preset)
    calls = []
    model.get_encoder().register_forward_hook(lambda module, args, output: calls.append(1))
    ids, mask = padded()
    model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, num_beams=3, do_sample=False,
                   pad_token_id=0)
    assert len(calls) == 1


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_rows_equal_alone(preset, side):
    model = tiny_model(preset)
    ids, mask = padded(side=side)
    tokens, logits = greedy(model, ids, mask)
    beams = model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, num_beams=3, do_sample=False,
                           pad_token_id=0, eos_token_id=None)
    for row, source in enumerate(SOURCES):
        alone = torch.tensor([source])
        tokens_alone, logits_alone = greedy(model, alone, torch.ones_like(alone))
        assert torch.equal(tokens[row], tokens_alone[0]), row
        torch.testing.assert_close(logits[row], logits_alone[0], rtol=1e-5, atol=1e-5)
        beam_alone = model.generate(alone, max_new_tokens=NEW_TOKENS, num_beams=3, do_sample=False,
                                    pad_token_id=0, eos_token_id=None)
        assert torch.equal(beams[row], beam_alone[0]), row


def test_pads_inside_a_source_and_several_sequences_per_padded_source_equal_each_alone(preset):
    # A source with pads at its start, inside it and at its end decodes as the source alone; top_k=1 sampling of
    # two sequences per row of a padded batch decodes each row's source alone twice.
    model = tiny_model(preset).double()
    holes, holes_mask = with_holes(TOKENS)
    kwargs = dict(max_new_tokens=4, pad_token_id=0, eos_token_id=None)
    tokens, logits = greedy(model, holes, holes_mask)
    tokens_alone, logits_alone = greedy(model, torch.tensor([TOKENS]), torch.ones(1, len(TOKENS), dtype=torch.long))
    assert torch.equal(tokens, tokens_alone)
    torch.testing.assert_close(logits, logits_alone, rtol=1e-9, atol=1e-9)
    ids, mask = padded(SOURCES[:2])
    several = model.generate(ids, attention_mask=mask, do_sample=True, top_k=1, num_return_sequences=2, **kwargs)
    for row, source in enumerate(SOURCES[:2]):
        alone = model.generate(torch.tensor([source]), do_sample=False, **kwargs)[0]
        assert torch.equal(several[2 * row], alone) and torch.equal(several[2 * row + 1], alone), row


def test_streaming_sends_the_tokens_returned_and_beam_search_refuses_a_streamer(preset):
    check_streaming(tiny_model(preset), torch.tensor([SOURCES[0]]))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_never_enters_the_encoders_final_state(side, cell, bidirectional):
    """What the decoder starts from (the bridge reads the final states) and what it attends to, per row of a
    padded batch, equal that source encoded alone: a pad position changes no state in either direction."""
    encoder = tiny_model("seq2seq-bahdanau-tiny", encoder_type=cell, decoder_type=cell,
                         bidirectional=bidirectional).get_encoder()
    ids, mask = padded(side=side)
    with torch.no_grad():
        together = encoder(input_ids=ids, attention_mask=mask)
        for row, source in enumerate(SOURCES):
            alone = encoder(input_ids=torch.tensor([source]))
            torch.testing.assert_close(together.final_state[row], alone.final_state[0], rtol=1e-6, atol=1e-6)
            real = together.last_hidden_state[row][mask[row].bool()]
            torch.testing.assert_close(real, alone.last_hidden_state[0], rtol=1e-6, atol=1e-6)


def test_attention_weights_sum_to_one_and_are_zero_on_padding(preset):
    model = tiny_model(preset)
    ids, mask = padded()
    target = torch.randint(3, 99, (3, 4))
    out = model(ids, attention_mask=mask, decoder_input_ids=target, output_attentions=True)
    generated = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0,
                               eos_token_id=None, output_attentions=True, return_dict_in_generate=True)
    if not model.config.has_attention:  # Sutskever's decoder sees the source only through its initial state
        assert out.cross_attentions is None and generated.cross_attentions[0] is None
        return
    layers = model.config.num_decoder_layers if model.config.is_transformer else 1
    assert len(out.cross_attentions) == layers
    per_step = [torch.cat(step, dim=0) for step in generated.cross_attentions]  # 3 steps x (layers * B, heads, 1, S)
    for weights in [*out.cross_attentions, *per_step]:
        rows = weights.shape[0] // 3
        pads = (mask == 0).repeat(rows, 1)[:, None, None, :].expand_as(weights)
        assert (weights[pads] == 0).all()  # exactly
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]), rtol=0, atol=1e-6)
    # The weights generation reports per step are the ones a full forward computes at each position.
    forward = model(ids, attention_mask=mask, decoder_input_ids=generated.sequences[:, :-1], output_attentions=True)
    for step, weights in enumerate(generated.cross_attentions):
        torch.testing.assert_close(weights[-1][:, :, 0], forward.cross_attentions[-1][:, :, step], rtol=1e-5,
                                   atol=1e-6)


def test_sampling_is_reproducible_and_returns_several_sequences(preset):
    model = tiny_model(preset)
    ids, mask = padded()
    kwargs = dict(attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=True, top_k=20, num_return_sequences=2,
                  pad_token_id=0, eos_token_id=None)
    torch.manual_seed(3)
    first = model.generate(ids, **kwargs)
    torch.manual_seed(3)
    assert first.shape == (6, NEW_TOKENS + 1) and torch.equal(first, model.generate(ids, **kwargs))


def test_save_load_roundtrip_and_auto_classes(preset, tmp_path):
    model = tiny_model(preset)
    ids, mask = padded()
    target = torch.randint(3, 99, (3, 4))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model) and type(AutoConfig.from_pretrained(tmp_path)) is type(model.config)
    assert type(AutoModel.from_config(model.config)) is type(model.model)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys() and all(torch.equal(original[k], restored[k]) for k in original)
    if model.config.tie_word_embeddings:
        assert loaded.lm_head.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    with torch.no_grad():
        # The same weights; small products may sum in another order in memory laid out differently (~1e-7).
        torch.testing.assert_close(loaded(ids, attention_mask=mask, decoder_input_ids=target).logits,
                                   model(ids, attention_mask=mask, decoder_input_ids=target).logits, rtol=1e-6,
                                   atol=1e-6)
    half = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert half.dtype == torch.bfloat16
    assert half.generate(ids, attention_mask=mask, max_new_tokens=3, pad_token_id=0).shape[0] == 3


def test_a_bidirectional_encoder_says_it_concatenates(tmp_path):
    """Its annotations are both directions side by side; a config.json saved when the field said "sum" (the generic
    default, read by nothing here) loads as what it computes, and "sum" is refused when a config is built."""
    model = tiny_model(SEQ2SEQ_FAMILIES["seq2seq-bahdanau"], bidirectional=True)
    assert model.config.bidirectional_merge == "concat"
    model.save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    assert values["bidirectional_merge"] == "concat"
    (tmp_path / "config.json").write_text(json.dumps({**values, "bidirectional_merge": "sum"}))
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert loaded.config.bidirectional_merge == "concat"
    ids, mask = padded()
    target = torch.randint(3, 99, (3, 4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, attention_mask=mask, decoder_input_ids=target).logits,
                                   model.eval()(ids, attention_mask=mask, decoder_input_ids=target).logits)
    with pytest.raises(ValueError, match="bidirectional_merge='sum' is invalid: allowed values are 'concat'"):
        type(model.config)(**{**model.config.to_diff_dict(), "bidirectional_merge": "sum"})


def test_attention_dropout_is_refused_where_no_attention_reads_it():
    # The recurrent attentions have no dropout: attention_dropout=0.5 trained as 0 without a word.
    config = tiny_config(SEQ2SEQ_FAMILIES["seq2seq-bahdanau"])
    with pytest.raises(ValueError, match="attention_dropout=0.5 is invalid for a recurrent decoder"):
        type(config)(**{**config.to_diff_dict(), "attention_dropout": 0.5})


# A field, a value away from its default, a preset that does not read it and one (with overrides) that does.
UNREAD_FIELDS = [
    ("num_attention_heads", 8, "seq2seq-bahdanau", ("seq2seq-transformer", {})),
    ("intermediate_size", 48, "seq2seq-sutskever", ("seq2seq-transformer", {})),
    ("layer_norm_eps", 1e-2, "seq2seq-luong-dot", ("seq2seq-transformer", {})),
    ("max_position_embeddings", 8, "seq2seq-bahdanau", ("seq2seq-transformer", {})),
    ("orthogonal_init", False, "seq2seq-transformer", ("seq2seq-bahdanau", {})),
    ("nonlinearity", "relu", "seq2seq-transformer", ("seq2seq-bahdanau", {"encoder_type": "rnn"})),
    ("forget_bias", 3.0, "seq2seq-bahdanau", ("seq2seq-bahdanau", {"encoder_type": "lstm"})),
    ("attention_size", 12, "seq2seq-luong-dot", ("seq2seq-luong-concat", {})),
]


@pytest.mark.parametrize("field, value, unread, reads", UNREAD_FIELDS, ids=[row[0] for row in UNREAD_FIELDS])
def test_a_field_the_architecture_does_not_read_is_refused(field, value, unread, reads):
    """One config class covers every encoder-decoder, so it has fields only some of them read: set on another
    (the Transformer's num_attention_heads on an LSTM's config) the model was built without it, silently. The one
    that reads it computes something else with it (which is what makes the refusal right)."""
    config = tiny_config(SEQ2SEQ_FAMILIES[unread])
    with pytest.raises(ValueError, match=rf"{field}={value!r} \(read only by .*\) is not read by a model of "
                                         rf"encoder_type='{config.encoder_type}'"):
        tiny_config(SEQ2SEQ_FAMILIES[unread], **{field: value})
    preset, overrides = reads
    base = tiny_model(SEQ2SEQ_FAMILIES[preset], **overrides)
    changed = tiny_model(SEQ2SEQ_FAMILIES[preset], **overrides, **{field: value})
    assert getattr(changed.config, field) == value
    ids, mask = padded()
    target = torch.randint(3, 99, (3, 12))
    if field == "max_position_embeddings":  # (read as a limit: 12 target positions are more than 8)
        base(ids, attention_mask=mask, decoder_input_ids=target)
        with pytest.raises(ValueError, match="max_position_embeddings=8"):
            changed(ids, attention_mask=mask, decoder_input_ids=target)
        return
    with torch.no_grad():
        before = base(ids, attention_mask=mask, decoder_input_ids=target).logits
        after = changed(ids, attention_mask=mask, decoder_input_ids=target).logits
    assert not torch.allclose(before, after)


def test_a_saved_config_with_an_unread_field_loads_with_a_warning(tmp_path, caplog):
    # A config.json written before the check (or edited by hand) still loads and computes what it computed; the
    # user is told what it ignores, and saving it again works (the check runs when a config is built, not saved).
    model = tiny_model(SEQ2SEQ_FAMILIES["seq2seq-bahdanau"])
    model.save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**values, "num_attention_heads": 8, "forget_bias": 3.0}))
    with caplog.at_level("WARNING"):
        loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert "sets num_attention_heads=8 (read only by the Transformer), forget_bias=3.0" in caplog.text
    assert loaded.config.num_attention_heads == 8
    ids, mask = padded()
    target = torch.randint(3, 99, (3, 4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, attention_mask=mask, decoder_input_ids=target).logits,
                                   model.eval()(ids, attention_mask=mask, decoder_input_ids=target).logits)
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["num_attention_heads"] == 8


def test_derived_fields_go_where_they_are_read_and_a_config_dict_builds_at_another_width(tmp_path, caplog):
    gru, transformer = (tiny_config(SEQ2SEQ_FAMILIES[name]) for name in ("seq2seq-bahdanau", "seq2seq-transformer"))
    assert (gru.intermediate_size, gru.attention_size) == (None, 32)  # bahdanau's additive score reads it
    assert (transformer.intermediate_size, transformer.attention_size) == (128, None)
    # A config's own dict, at another hidden_size, builds (nothing derived from the old width is carried on).
    for config in (gru, transformer):
        values = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "transformers_version")}
        values.update(hidden_size=48, embedding_size=48)
        if config.is_transformer:
            values["intermediate_size"] = None
        rebuilt = type(config)(**values)
        assert rebuilt.hidden_size == 48 and (rebuilt.intermediate_size == 192) == config.is_transformer
    # A config.json of an earlier release wrote every derived field: what it derived is read as not set, silently.
    config = tiny_config(SEQ2SEQ_FAMILIES["seq2seq-luong-dot"])
    config.save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**values, "intermediate_size": 128, "attention_size": 32}))
    with caplog.at_level("WARNING"):
        loaded = AutoConfig.from_pretrained(tmp_path)
    assert (loaded.intermediate_size, loaded.attention_size) == (None, None) and "does not read" not in caplog.text


def test_keywords_given_beside_a_saved_config_are_checked_as_the_users(tmp_path):
    # transformers sets from_pretrained's keywords on the config after building it from the file.
    tiny_model(SEQ2SEQ_FAMILIES["seq2seq-bahdanau"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"forget_bias=0.0 \(read only by the LSTM's cell\) is not read"):
        AutoConfig.from_pretrained(tmp_path, forget_bias=0.0)
    with pytest.raises(ValueError, match=r"num_attention_heads=8 \(read only by the Transformer\) is not read"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path, num_attention_heads=8)
    assert AutoConfig.from_pretrained(tmp_path, dropout=0.25).dropout == 0.25  # a field it reads


def test_an_attention_given_beside_a_saved_config_derives_its_sizes_as_when_built(tmp_path):
    # from_pretrained(folder, attention=...) sets the keyword after the file built the config: the sizes that follow
    # the attention are derived as when a config is built with it (a Luong folder has no attention_size for
    # Bahdanau's score: the model refused "attention_size=None", a field the user never set).
    tiny_model(SEQ2SEQ_FAMILIES["seq2seq-luong-general"]).save_pretrained(tmp_path / "luong")
    config = AutoConfig.from_pretrained(tmp_path / "luong", attention="bahdanau", input_feeding=False)
    assert config.attention_size == config.hidden_size
    model = AutoModelForSeq2SeqLM.from_config(config)
    assert model.model.decoder.attention.score == "bahdanau"
    # The file's input_feeding, at what Luong attention derives, follows the attention given; one set by hand stays
    assert AutoConfig.from_pretrained(tmp_path / "luong", attention="bahdanau").input_feeding is False
    tiny_model(SEQ2SEQ_FAMILIES["seq2seq-luong-general"], input_feeding=False).save_pretrained(tmp_path / "unfed")
    assert AutoConfig.from_pretrained(tmp_path / "unfed", attention="luong-dot").input_feeding is False
    assert AutoConfig.from_pretrained(tmp_path / "luong", attention="luong-dot").input_feeding is True
    # The other way, the file's derived attention_size is read as not set; one of its own is refused by name.
    tiny_model(SEQ2SEQ_FAMILIES["seq2seq-bahdanau"]).save_pretrained(tmp_path / "bahdanau")
    assert AutoConfig.from_pretrained(tmp_path / "bahdanau", attention="luong-general").attention_size is None
    tiny_model(SEQ2SEQ_FAMILIES["seq2seq-bahdanau"], attention_size=16).save_pretrained(tmp_path / "sized")
    with pytest.raises(ValueError, match=r"attention_size=16 \(read only by the additive scores"):
        AutoConfig.from_pretrained(tmp_path / "sized", attention="luong-general")


@pytest.mark.parametrize("name, field", [("seq2seq-bahdanau", "attention_size"),
                                         ("seq2seq-transformer", "intermediate_size")])
def test_a_derived_field_none_where_it_is_read_is_derived_or_refused(tmp_path, name, field):
    # None given to from_pretrained means "derive it", as when a config is built; set on a built config, the model
    # refuses it by name (it reached nn.Linear as a bare TypeError).
    model = tiny_model(SEQ2SEQ_FAMILIES[name])
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, **{field: None})
    assert getattr(loaded.config, field) == {"attention_size": 32, "intermediate_size": 128}[field]
    config = tiny_config(SEQ2SEQ_FAMILIES[name])
    setattr(config, field, None)
    with pytest.raises(ValueError, match=rf"{field}=None is invalid: expected an integer"):
        AutoModelForSeq2SeqLM.from_config(config)
    # A keyword equal to the derivation, where the field is not read, is not set (as when a config is built with it).
    assert AutoConfig.from_pretrained(tmp_path, **{"attention_size": 32, "intermediate_size": 128,
                                                   field: None}) is not None


@pytest.mark.parametrize("field, value", [("classifier_dropout", 0.3), ("classifier_pooling", "mean")])
def test_a_classification_field_is_refused_on_an_encoder_decoder(field, value):
    with pytest.raises(ValueError, match=rf"{field}={value!r} \(read only by classification heads \(an "
                                         r"encoder-decoder has none\)\)"):
        tiny_config(SEQ2SEQ_FAMILIES["seq2seq-transformer"], **{field: value})


@pytest.mark.parametrize("name", ("cache", *CACHE_ALIASES))
def test_every_cache_name_continues_the_same_state(preset, name):
    model = tiny_model(preset)
    ids, mask = padded()
    target = torch.randint(3, 99, (3, 5))
    full = model(ids, attention_mask=mask, decoder_input_ids=target).logits[:, 3:]
    start = output_cache(model(ids, attention_mask=mask, decoder_input_ids=target[:, :3], use_cache=True))
    out = model(ids, attention_mask=mask, decoder_input_ids=target[:, 3:], **{name: start})
    torch.testing.assert_close(out.logits, full, rtol=1e-5, atol=1e-5)
    assert getattr(out, OUTPUT_CACHE_FIELD) is start  # where the installed release's generate() reads it


def test_generate_continues_from_a_cache_of_the_first_decoder_tokens(preset):
    # transformers slices nothing off an encoder-decoder's decoder_input_ids for a given cache: it fed the cached
    # tokens again on top of it (garbage, silently). Only the new ones are fed now; a cache of them all is refused.
    model = tiny_model(preset)
    ids, mask = padded()
    decoder_ids = torch.tensor([[model.config.decoder_start_token_id, 7, 8, 9]] * 3)
    kwargs = dict(attention_mask=mask, decoder_input_ids=decoder_ids, max_new_tokens=4, do_sample=False,
                  eos_token_id=None, pad_token_id=0)
    expected = model.generate(ids, **kwargs)
    with torch.no_grad():
        cache = output_cache(model(ids, attention_mask=mask, decoder_input_ids=decoder_ids[:, :2], use_cache=True))
    assert torch.equal(model.generate(ids, cache=cache, **kwargs), expected)
    assert cache.get_seq_length() == 4 + 3
    with pytest.raises(ValueError, match=r"already holds 7 position\(s\), but decoder_input_ids has 4"):
        model.generate(ids, cache=cache, **kwargs)
    # a cache with use_cache=False, and the cache of a beam search (the beams of its last step), are refused
    with pytest.raises(ValueError, match="a cache to continue was passed with use_cache=False"):
        model.generate(ids, cache=cache, use_cache=False, **kwargs)
    beams = model.generate(ids, num_beams=2, return_dict_in_generate=True, **kwargs)
    with pytest.raises(ValueError, match="this cache comes from a beam search"):
        model.generate(ids, cache=output_cache(beams), **{**kwargs, "decoder_input_ids": beams.sequences})


@pytest.mark.parametrize("mode", [dict(num_beams=3, num_return_sequences=2, do_sample=False),
                                  dict(do_sample=True, top_k=20, num_return_sequences=3)], ids=["beams", "sampled"])
def test_generate_continues_a_cache_into_several_sequences_per_source(preset, mode):
    # generate() repeats every input tensor per beam / returned sequence, but not a cache object: such a call with a
    # cache failed with the cache's batch-size error. The cache's rows are repeated alongside.
    model = tiny_model(preset)
    ids, mask = padded()
    decoder_ids = torch.tensor([[model.config.decoder_start_token_id, 7, 8, 9]] * 3)
    kwargs = dict(attention_mask=mask, decoder_input_ids=decoder_ids, max_new_tokens=4, eos_token_id=None,
                  pad_token_id=0, **mode)
    torch.manual_seed(0)
    expected = model.generate(ids, **kwargs)
    with torch.no_grad():
        cache = output_cache(model(ids, attention_mask=mask, decoder_input_ids=decoder_ids[:, :2], use_cache=True))
    torch.manual_seed(0)
    assert torch.equal(model.generate(ids, cache=cache, **kwargs), expected)
    with torch.no_grad():  # the source given as its encoder outputs: the decoder inputs give the batch
        encoded = model.get_encoder()(ids, attention_mask=mask)
        cache = output_cache(model(ids, attention_mask=mask, decoder_input_ids=decoder_ids[:, :2], use_cache=True))
    torch.manual_seed(0)
    assert torch.equal(model.generate(encoder_outputs=encoded, cache=cache, **kwargs), expected)


def test_keywords_are_checked(preset):
    model = tiny_model(preset)
    ids, mask = padded()
    target = torch.randint(3, 99, (3, 4))
    for module in (model, model.model):
        with pytest.raises(TypeError, match=r"'decoder_attention_mak' \(did you mean 'decoder_attention_mask'\?\)"):
            module(ids, decoder_input_ids=target, decoder_attention_mak=torch.ones_like(target))
        with pytest.raises(TypeError, match=r"'encoder_output' \(did you mean 'encoder_outputs'\?\)"):
            module(ids, decoder_input_ids=target, encoder_output=None)
    # What transformers passes to every model (generate on 5.23, Trainer) is accepted.
    out = model(ids, attention_mask=mask, decoder_input_ids=target, cache_position=torch.arange(4),
                num_items_in_batch=7, output_attentions=False, return_dict=True)
    assert out.logits.shape == (3, 4, 99)
    first = output_cache(model(ids, decoder_input_ids=target, use_cache=True))
    second = output_cache(model(ids, decoder_input_ids=target, use_cache=True))
    with pytest.raises(ValueError, match="two different caches"):
        model(ids, decoder_input_ids=target[:, :1], cache=first, past_key_values=second)


def test_bad_inputs_are_refused_clearly(preset):
    model = tiny_model(preset)
    ids, mask = padded()
    target = torch.randint(3, 99, (3, 4))
    with pytest.raises(ValueError, match="needs the decoder's inputs: pass decoder_input_ids"):
        model(ids, attention_mask=mask)
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"source row\(s\) \[1\] have no real token"):
        model(ids, attention_mask=empty, decoder_input_ids=target)
    # The same mask beside encoder_outputs (the encoder is not run, so it cannot refuse): the recurrent decoders
    # read a context of zeros and the Transformer's attended uniformly to the padding, silently.
    encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)
    with pytest.raises(ValueError, match=r"source row\(s\) \[1\] have no real token"):
        model(attention_mask=empty, encoder_outputs=encoded, decoder_input_ids=target)
    with pytest.raises(ValueError, match="labels contain 99"):
        model(ids, attention_mask=mask, labels=torch.full((3, 4), 99))
    with pytest.raises(ValueError, match="decoder inputs: input_ids contain token id 120"):
        model(ids, attention_mask=mask, decoder_input_ids=torch.full((3, 4), 120))
    with pytest.raises(ValueError, match="the decoder inputs hold 2 sequence"):
        model(ids, attention_mask=mask, decoder_input_ids=target[:2])
    with pytest.raises(ValueError, match="attention_mask of shape \\(3, 6\\) does not fit the source"):
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)
        model(attention_mask=mask[:, 1:], encoder_outputs=encoded, decoder_input_ids=target)
    with pytest.raises(ValueError, match="encoder_outputs must be what this model's encoder returned"):
        model(encoder_outputs={"x": 1}, decoder_input_ids=target)
    with pytest.raises(ValueError, match=r"of shape \(3, 7, 5\) is not this model's encoder output"):
        model(encoder_outputs=(torch.randn(3, 7, 5),), decoder_input_ids=target)
    with pytest.raises(TypeError, match="labels must be a tensor; got list"):  # (was an AttributeError on .dim)
        model(ids, attention_mask=mask, labels=target.tolist())
    # generate() makes decoder_input_ids itself, so decoder_inputs_embeds given to it met them in the decoder, which
    # named "input_ids or inputs_embeds", arguments the user had not given.
    embeds = model.get_input_embeddings()(target)
    message = "pass exactly one of decoder_input_ids or decoder_inputs_embeds .generate.. makes decoder_input_ids"
    with pytest.raises(ValueError, match=message):
        model(ids, attention_mask=mask, decoder_input_ids=target, decoder_inputs_embeds=embeds)
    with pytest.raises(ValueError, match=message):
        model.generate(ids, attention_mask=mask, decoder_inputs_embeds=embeds, max_new_tokens=2, do_sample=False)


def test_encoder_outputs_as_a_tuple_and_outputs_as_tuples(preset):
    model = tiny_model(preset)
    ids, mask = padded()
    target = torch.randint(3, 99, (3, 4))
    encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)
    want = model(ids, attention_mask=mask, decoder_input_ids=target).logits
    as_tuple = (encoded.last_hidden_state, encoded.final_state)
    torch.testing.assert_close(model(attention_mask=mask, encoder_outputs=as_tuple, decoder_input_ids=target).logits,
                               want)
    loss, logits, *_ = model(ids, attention_mask=mask, decoder_input_ids=target, labels=target, return_dict=False)
    torch.testing.assert_close(logits, want)
    assert torch.isfinite(loss)
    # The encoder's own tuple (return_dict=False, as transformers' encoders give it): the fields set, in order; a
    # Transformer encoder's hidden states came second, where a recurrent one's final state goes, and were taken for it.
    full = model(ids, attention_mask=mask, decoder_input_ids=target, output_hidden_states=True)
    returned = model.get_encoder()(input_ids=ids, attention_mask=mask, output_hidden_states=True, return_dict=False)
    assert type(returned) is tuple and len(returned) == (2 if model.config.is_transformer else 3)
    again = model(attention_mask=mask, encoder_outputs=returned, decoder_input_ids=target, output_hidden_states=True)
    torch.testing.assert_close(again.logits, want)
    assert len(again.encoder_hidden_states) == len(full.encoder_hidden_states) == model.config.num_hidden_layers + 1
    with pytest.raises(ValueError, match=r"encoder_outputs as a tuple must be \(last_hidden_state\[, final_state\]"):
        model(attention_mask=mask, encoder_outputs=(*returned, (), ()), decoder_input_ids=target)


def test_tuple_outputs_keep_every_output_asked_for(preset):
    """return_dict=False gives Seq2SeqLMOutput's set fields in order (attentions and hidden states were dropped),
    and the backbone honours return_dict too."""
    model = tiny_model(preset)
    ids, mask = padded()
    target = torch.randint(3, 99, (3, 4))
    asked = dict(attention_mask=mask, decoder_input_ids=target, output_attentions=True, output_hidden_states=True)
    as_dict = model(ids, **asked)
    as_tuple = model(ids, **asked, return_dict=False)
    expected = as_dict.to_tuple()
    assert len(as_tuple) == len(expected)
    assert as_dict.decoder_hidden_states is not None and as_dict.encoder_hidden_states is not None
    for got, want in zip(as_tuple, expected):
        if isinstance(want, torch.Tensor):
            torch.testing.assert_close(got, want)
        elif isinstance(want, tuple):
            assert len(got) == len(want)
    backbone = model.model(ids, **asked, return_dict=False)
    assert isinstance(backbone, tuple) and len(backbone) == len(model.model(ids, **asked).to_tuple())


def test_generate_refuses_a_cache_implementation_it_would_ignore(preset):
    model = tiny_model(preset)
    ids, mask = padded()
    with pytest.raises(ValueError, match="cache_implementation='static' is not supported"):
        model.generate(ids, attention_mask=mask, max_new_tokens=2, cache_implementation="static")
    model.generate(ids, attention_mask=mask, max_new_tokens=2, cache_implementation="dynamic")


def test_int32_labels_give_the_int64_loss(preset):
    model = tiny_model(preset)
    ids, mask = padded()
    target = torch.randint(3, 99, (3, 4))
    loss = model(ids, attention_mask=mask, labels=target).loss
    torch.testing.assert_close(model(ids, attention_mask=mask, labels=target.int()).loss, loss)
    with pytest.raises(ValueError, match="labels must be integer token ids"):
        model(ids, attention_mask=mask, labels=target.bool())
    with pytest.raises(ValueError, match=r"labels of shape \(3, 0\) hold no target position"):
        model(ids, attention_mask=mask, labels=target[:, :0])  # (not named as the decoder inputs it is shifted into)


def test_hf_trainer_and_seq2seq_trainer(preset, tmp_path):
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    model = tiny_model(preset).train()
    torch.manual_seed(0)
    rows = [torch.randint(3, 99, (7,)) for _ in range(8)]
    dataset = [{"input_ids": r, "attention_mask": torch.ones(7, dtype=torch.long), "labels": r.flip(0)[:5]}
               for r in rows]
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                                    per_device_eval_batch_size=4, learning_rate=1e-2, report_to=[],
                                    save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
                                    predict_with_generate=True, generation_max_length=6)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset)
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    metrics = trainer.evaluate()
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    predictions = trainer.predict(dataset[:4]).predictions  # generated by generate()
    assert predictions.shape[0] == 4 and (predictions[:, 0] == model.config.decoder_start_token_id).all()


def test_assisted_decoding_is_refused_with_the_reason_and_what_decodes_instead(preset):
    # transformers' own refusal says only "not supported with stateful models"
    model = tiny_model(preset)
    with pytest.raises(ValueError, match=rf"{type(model).__name__}\.generate: assisted decoding .* stateful models: "
                                         r"this model's decoding state cannot be rolled back .*greedy, sampling and "
                                         "beam search work"):
        model.generate(torch.tensor([[5, 6, 7, 5, 6, 7]]), prompt_lookup_num_tokens=2, max_new_tokens=3)


def test_the_transformer_takes_exactly_max_position_embeddings_positions():
    # Positions 0 .. max_position_embeddings - 1 exist: a source or target of exactly that length runs, one token
    # more is refused by name (an off-by-one let position 8 of an 8-position table through to a bare IndexError or a
    # wrong row).
    model = tiny_model("seq2seq-transformer-tiny", max_position_embeddings=8)
    fits, longer = torch.randint(3, 99, (1, 8)), torch.randint(3, 99, (1, 9))
    assert model(fits, decoder_input_ids=fits).logits.shape == (1, 8, 99)
    with pytest.raises(ValueError, match="position 8 is beyond max_position_embeddings=8"):
        model(longer, decoder_input_ids=fits)
    with pytest.raises(ValueError, match="position 8 is beyond max_position_embeddings=8"):
        model(fits, decoder_input_ids=longer)


@pytest.mark.parametrize("preset,overrides,message", [
    # each a setting the model would be built wrong from (or crash on later, in a bare traceback), refused by name
    ("seq2seq-bahdanau-tiny", {"num_decoder_layers": 0, "bridge": "zeros"}, "num_decoder_layers=0"),
    ("seq2seq-bahdanau-tiny", {"embedding_size": 0, "tie_word_embeddings": False}, "embedding_size=0"),
    ("seq2seq-transformer-tiny", {"layer_norm_eps": 0.0}, "layer_norm_eps=0.0"),
    ("seq2seq-bahdanau-tiny", {"initializer_range": -1.0}, "initializer_range=-1.0"),
    ("seq2seq-bahdanau-tiny", {"decoder_start_token_id": 99}, "decoder_start_token_id=99"),
    ("seq2seq-bahdanau-tiny", {"dropout": 1.5}, "dropout=1.5"),
    ("seq2seq-bahdanau-tiny", {"embedding_size": 16}, "tie_word_embeddings=True needs embedding_size == hidden_size"),
    ("seq2seq-transformer-tiny", {"num_attention_heads": 5}, "num_attention_heads=5 does not divide hidden_size=32"),
    ("seq2seq-transformer-tiny", {"embedding_size": 16, "tie_word_embeddings": False},
     "a Transformer's embedding_size must equal hidden_size"),
    ("seq2seq-bahdanau-tiny", {"attention_dropout": 0.1}, "attention_dropout=0.1 is invalid for a recurrent"),
    ("seq2seq-bahdanau-tiny", {"input_feeding": True}, r"input_feeding=True is Luong's.*\(Bahdanau's decoder reads"),
    ("seq2seq-sutskever-tiny", {"input_feeding": True}, r"input_feeding=True is Luong's.*without attention has no"),
    ("seq2seq-luong-dot-tiny", {"bidirectional": True, "bridge": "projection"}, "attention='luong-dot' scores"),
    ("seq2seq-sutskever-tiny", {"bidirectional": True, "bridge": "copy"}, "bridge='copy' starts each decoder layer"),
    ("seq2seq-sutskever-tiny", {"encoder_type": "gru", "decoder_type": "lstm", "bridge": "copy"},
     "bridge='copy' starts each decoder layer"),
    ("seq2seq-bahdanau-tiny", {"num_decoder_layers": 1}, r"num_decoder_layers \(1\) must equal num_hidden_layers"),
    ("seq2seq-sutskever-tiny", {"bridge": "zeros"}, "leaves the decoder no way to see the source"),
    ("seq2seq-bahdanau-tiny", {"attention": "scaled-dot"}, "attention='scaled-dot' is invalid"),
    ("seq2seq-transformer-tiny", {"attention": "bahdanau"}, "invalid for a Transformer decoder"),
    ("seq2seq-transformer-tiny", {"input_feeding": True}, "input_feeding=True is invalid for a Transformer"),
    ("seq2seq-transformer-tiny", {"bridge": "copy"}, "bridge='copy' is invalid for a Transformer"),
])
def test_a_config_the_model_cannot_be_built_from_is_refused(preset, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(preset, **overrides)


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_transformer_decoder_input_equals_the_row_alone(side):
    # decoder_attention_mask must keep padded decoder positions out of the self-attention's keys and out of the
    # position count (positions count real tokens): ignoring either changed the real positions' logits silently.
    model = tiny_model("seq2seq-transformer-tiny")
    source = torch.tensor([[5, 17, 33, 8]])
    alone = torch.tensor([[1, 7, 19]])
    padded_ids = torch.tensor([[0, 0, 1, 7, 19]]) if side == "left" else torch.tensor([[1, 7, 19, 0, 0]])
    real = padded_ids != 0
    with torch.no_grad():
        want = model(source, decoder_input_ids=alone).logits[0]
        got = model(source, decoder_input_ids=padded_ids, decoder_attention_mask=real.long()).logits[0]
    torch.testing.assert_close(got[real[0]], want, rtol=1e-5, atol=1e-5)


def test_derived_defaults_and_sizes_follow_the_papers_and_the_cache():
    # The defaults a config derives, and the sizes it reports (model cards, `seqzoo list`, cache checks), by hand:
    # a wrong one builds a different model than documented, or reports a memory cost that is not what decoding keeps.
    luong = Seq2SeqConfig(hidden_size=32, attention="luong-general", bos_token_id=1)
    assert luong.input_feeding is True and luong.steps_in_python and luong.bridge == "copy"
    assert luong.decoder_start_token_id == 1 and luong.initializer_range == 1.0 and luong.intermediate_size is None
    assert Seq2SeqConfig(hidden_size=32, attention="luong-dot", input_feeding=False).steps_in_python is False
    assert luong.max_input_length is None and not luong.capabilities.constant_state_decode
    # LSTM state per sequence: 2 layers x (h, c) x 32, plus the fed vector h~ (32); per source token: the
    # annotation (32) and its W_a h_j (32). Floats of 4 bytes.
    assert luong.state_bytes_per_sequence() == (2 * 2 * 32 + 32) * 4
    assert luong.kv_bytes_per_token() == (32 + 32) * 4

    bahdanau = Seq2SeqConfig(hidden_size=32, encoder_type="gru", bidirectional=True)
    assert bahdanau.attention == "bahdanau" and bahdanau.input_feeding is False and bahdanau.steps_in_python
    assert bahdanau.bridge == "projection" and bahdanau.annotation_size == 64 and bahdanau.attention_size == 32
    assert bahdanau.state_bytes_per_sequence() == 2 * 32 * 4
    assert bahdanau.kv_bytes_per_token() == (64 + 32) * 4  # both directions' annotation, and W_h h_j
    assert bahdanau.layer_mixer_types() == ["gru", "gru", "source-attention"]
    assert Seq2SeqConfig(hidden_size=32, encoder_type="gru", decoder_type="lstm").bridge == "projection"

    sutskever = Seq2SeqConfig(hidden_size=32, attention="none")
    assert sutskever.layer_mixer_types() == ["lstm", "lstm"] and sutskever.capabilities.constant_state_decode
    assert sutskever.kv_bytes_per_token() == 0 and sutskever.state_bytes_per_sequence() == 2 * 2 * 32 * 4

    transformer = Seq2SeqConfig(hidden_size=32, encoder_type="transformer", max_position_embeddings=64)
    assert transformer.intermediate_size == 128 and transformer.initializer_range == 32**-0.5
    assert transformer.max_input_length == 64 and transformer.state_bytes_per_sequence() == 0
    assert transformer.kv_bytes_per_token() == 2 * 2 * 32 * 4  # K and V of 2 layers
    assert transformer.is_encoder_decoder is True


def test_weights_start_from_the_documented_initialisation():
    # Recurrent models: embeddings N(0, 1), other linear layers torch.nn's U(+-1/sqrt(fan_in)) with zero biases;
    # the Transformer: embeddings N(0, d^-0.5), Xavier-uniform U(+-sqrt(6 / (fan_in + fan_out))), the sinusoidal
    # table of Vaswani et al. A wrong scale trains, only worse: nothing else would notice.
    recurrent = tiny_model("seq2seq-bahdanau-tiny")  # (its bridge and readout are not square: fan_in matters)
    transformer = tiny_model("seq2seq-transformer-tiny")
    for model, std in ((recurrent, 1.0), (transformer, 32**-0.5)):
        assert abs(model.get_input_embeddings().weight.std().item() / std - 1) < 0.1
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                fan_in, fan_out = module.in_features, module.out_features
                bound = (6 / (fan_in + fan_out)) ** 0.5 if model is transformer else fan_in**-0.5
                largest = module.weight.abs().max().item()
                assert 0.8 * bound < largest <= bound, (name, largest, bound)
                assert module.bias is None or (module.bias == 0).all(), name
    table = transformer.get_encoder().embed_positions.table
    torch.testing.assert_close(table[:7], sinusoids(7, 32).to(table.dtype), rtol=1e-5, atol=1e-5)


def test_no_split_modules_name_classes_the_model_has(preset):
    # accelerate (device_map, FSDP's wrap units) refuses a model whose _no_split_modules names a class it lacks: a
    # recurrent model's are its recurrent layers, the Transformer's its encoder and decoder layers.
    model = tiny_model(preset)
    classes = {type(module).__name__ for module in model.modules()}
    assert model._no_split_modules and set(model._no_split_modules) <= classes
    want = {"EncoderLayer", "DecoderLayer"} if model.config.is_transformer else {"LSTMMixer", "GRUMixer", "RNNMixer"}
    assert set(model._no_split_modules) <= want


def test_labels_shift_with_the_configured_pad_and_are_checked_against_the_decoder_inputs():
    # -100 becomes config.pad_token_id (not token 0); a left-padded row is refused even when two labels wide; labels
    # of another shape than the decoder inputs (the same count of tokens, so a flattened loss would still run) are
    # refused, not scored against the wrong positions.
    labels = torch.tensor([[7, 8, -100], [9, -100, -100]])
    assert shift_tokens_right(labels, 5, 1).tolist() == [[1, 7, 8], [1, 9, 5]]
    with pytest.raises(ValueError, match="left-padded"):
        shift_tokens_right(torch.tensor([[-100, 7]]), 5, 1)
    model = tiny_model("seq2seq-bahdanau-tiny")
    ids, mask = padded()
    with pytest.raises(ValueError, match=r"labels of shape \(6, 2\) do not fit the decoder inputs of shape \(3, 4\)"):
        model(ids, attention_mask=mask, decoder_input_ids=torch.randint(3, 99, (3, 4)),
              labels=torch.randint(3, 99, (6, 2)))


def test_a_source_mask_beside_encoder_outputs_is_checked_for_0_and_1(preset):
    # The encoder, which checks the mask's values, is not run when encoder_outputs are passed: a mask of 2s or 0.5s
    # was read as 1 wherever it was not 0.
    model = tiny_model(preset)
    ids, mask = padded()
    target = torch.randint(3, 99, (3, 4))
    encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)
    for bad, shown in ((mask * 2, "2"), (mask * 0.5, "0.5")):
        with pytest.raises(ValueError, match=f"attention_mask must hold 1 .* and 0 .* only; found {shown}"):
            model(attention_mask=bad, encoder_outputs=encoded, decoder_input_ids=target)
    want = model(ids, attention_mask=mask, decoder_input_ids=target).logits
    got = model(attention_mask=mask.float(), encoder_outputs=encoded, decoder_input_ids=target).logits
    torch.testing.assert_close(got, want)


def test_a_final_state_that_is_not_the_encoders_is_refused_by_shape():
    # (was torch's matmul or "Input batch size 3 doesn't match hidden0 batch size 1" deep in the decoder's cell)
    model = tiny_model("seq2seq-sutskever-tiny")
    ids, mask = padded()
    target = torch.randint(3, 99, (3, 4))
    encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)
    final = encoded.final_state  # (B, layers, F)
    for bad in (final[:1], final[..., :3], final[:, :1] if final.shape[1] > 1 else final.repeat(1, 2, 1)):
        with pytest.raises(ValueError, match=rf"final_state of shape {re.escape(str(tuple(bad.shape)))} is not "
                                             rf"this model's encoder's final state .* expected "
                                             rf"{re.escape(str(tuple(final.shape)))}"):
            model(attention_mask=mask, encoder_outputs=(encoded.last_hidden_state, bad), decoder_input_ids=target)
    with pytest.raises(ValueError, match=r"bridge='copy' .* encoder_outputs passed hold none \(final_state\)"):
        model(attention_mask=mask, encoder_outputs=(encoded.last_hidden_state,), decoder_input_ids=target)


def test_labels_need_a_start_token_and_a_pad_token_for_their_ignored_positions():
    ids, mask = padded()
    labels = torch.tensor([[7, -100, 8, 9], [7, 8, 9, 10], [7, 8, 9, -100]])
    with pytest.raises(ValueError, match=r"decoder_start_token_id \(or bos_token_id\) must be set"):
        tiny_model("seq2seq-bahdanau-tiny", bos_token_id=None, decoder_start_token_id=None)(
            ids, attention_mask=mask, labels=labels)
    model = tiny_model("seq2seq-bahdanau-tiny", pad_token_id=None)
    with pytest.raises(ValueError, match=r"labels hold -100 .* set config.pad_token_id"):
        model(ids, attention_mask=mask, labels=labels)
    labels[0, 1] = 6  # (a last -100 is not shifted in)
    assert torch.isfinite(model(ids, attention_mask=mask, labels=labels).loss)
