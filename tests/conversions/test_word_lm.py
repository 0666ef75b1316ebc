"""``seqzoo convert word-lm``: PyTorch's word-language-model nn.RNN / LSTM / GRU LMs, checked against the torch.nn
model itself (built here in the example's shape: encoder -> rnn -> decoder, seq-first, log_softmax output)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from seqzoo.cli import main as seqzoo_main
from seqzoo.conversions.word_lm import convert_word_lm, hidden_to_cache, load_hidden_state

IDS = torch.tensor([[5, 17, 33, 8, 61, 12, 40], [9, 3, 60, 44, 21, 6, 2]])


class WordLM(nn.Module):
    """The example's RNNModel: embedding -> nn.RNN/LSTM/GRU -> linear decoder, (T, B) inputs, log-probabilities."""

    def __init__(self, cell, ntoken=99, ninp=24, nhid=32, nlayers=2, tie=False, nonlinearity="tanh", bias=True):
        super().__init__()
        self.encoder = nn.Embedding(ntoken, ninp)
        if cell == "rnn":
            self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=nonlinearity, bias=bias)
        else:
            self.rnn = getattr(nn, cell.upper())(ninp, nhid, nlayers, bias=bias)
        self.decoder = nn.Linear(nhid, ntoken, bias=bias)
        if tie:
            self.decoder.weight = self.encoder.weight

    def forward(self, tokens, hidden=None):
        output, hidden = self.rnn(self.encoder(tokens), hidden)
        return torch.log_softmax(self.decoder(output), dim=-1), hidden


CASES = {
    "lstm": dict(cell="lstm"),
    "gru-tied": dict(cell="gru", ninp=32, tie=True),
    "rnn-relu": dict(cell="rnn", nonlinearity="relu"),
    "rnn-tanh-1layer": dict(cell="rnn", nlayers=1),
    "gru-no-bias": dict(cell="gru", bias=False),  # no bias saved, in the layers or the decoder
}


def reference(case, seed=0):
    torch.manual_seed(seed)
    return WordLM(**CASES[case]).eval()


def random_hidden(ref, batch=2):
    shape = (ref.rnn.num_layers, batch, ref.rnn.hidden_size)
    return (torch.randn(shape), torch.randn(shape)) if isinstance(ref.rnn, nn.LSTM) else torch.randn(shape)


@pytest.mark.parametrize("case", sorted(CASES))
def test_log_probabilities_match_the_example(case, tmp_path):
    ref = reference(case)
    torch.save(ref.state_dict(), tmp_path / "model.pt")
    model = convert_word_lm(tmp_path / "model.pt", nonlinearity=CASES[case].get("nonlinearity", "tanh")
                            if CASES[case]["cell"] == "rnn" else None)
    assert model.config.model_type == f"seqzoo_{CASES[case]['cell']}"
    assert model.config.tie_word_embeddings == CASES[case].get("tie", False)
    with torch.no_grad():
        expected, _ = ref(IDS.t())
        actual = model(IDS).logits.log_softmax(-1)
    torch.testing.assert_close(actual, expected.transpose(0, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["lstm", "gru-tied", "rnn-relu"])
def test_hidden_state_carries_over_into_a_cache(case):
    ref = reference(case, seed=1)
    model = convert_word_lm(ref.state_dict(), nonlinearity=CASES[case].get("nonlinearity"))
    hidden = random_hidden(ref)
    with torch.no_grad():
        expected, _ = ref(IDS.t(), hidden)
    out = model.generate(IDS, attention_mask=torch.ones_like(IDS), cache=hidden_to_cache(hidden, model.config),
                         max_new_tokens=1, do_sample=False, pad_token_id=0, output_logits=True,
                         return_dict_in_generate=True)
    torch.testing.assert_close(out.logits[0].log_softmax(-1), expected[-1], atol=1e-5, rtol=1e-5)


def test_cli_with_key_map_vocabulary_and_hidden_state(tmp_path, capsys):
    ref = reference("lstm", seed=2)
    renamed = {k.replace("encoder.", "embedding.").replace("rnn.", "lstm.").replace("decoder.", "fc."): v
               for k, v in ref.state_dict().items()}
    torch.save(renamed, tmp_path / "model.pt")
    words = ["<unk>", "<eos>", *[f"w{i}" for i in range(97)]]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    hidden = random_hidden(ref, batch=1)
    torch.save(hidden, tmp_path / "hidden.pt")
    out = tmp_path / "out"
    assert seqzoo_main(["convert", "word-lm", str(tmp_path / "model.pt"), str(out), "--key-map", "embedding=encoder",
                        "lstm=rnn", "fc=decoder", "--vocab", str(tmp_path / "vocab.txt"), "--hidden",
                        str(tmp_path / "hidden.pt"), "--set", "dropout=0.2"]) == 0
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.dropout == 0.2 and model.config.pad_token_id is None
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("w3 w5 zzz\nw7")["input_ids"] == [5, 7, 0, 1, 9]
    # Every word decodes after a space, so a continuation decoded alone continues the text (prompt + new text).
    assert tokenizer.decode([5, 7]) + tokenizer.decode([1, 9]) == tokenizer.decode([5, 7, 1, 9]) == " w3 w5 <eos> w7"
    # <unk> and <eos> are words the model predicts: kept where special tokens are skipped (`seqzoo generate`, pipelines)
    assert tokenizer.decode([5, 0, 1, 9], skip_special_tokens=True) == " w3 <unk> <eos> w7"
    cache = load_hidden_state(out / "hidden_state.safetensors", model.config)
    ids = torch.tensor([[5, 7, 9]])
    with torch.no_grad():
        expected, _ = ref(ids.t(), hidden)
    generated = model.generate(ids, attention_mask=torch.ones_like(ids), cache=cache, max_new_tokens=1,
                               do_sample=False, output_logits=True, return_dict_in_generate=True)
    torch.testing.assert_close(generated.logits[0].log_softmax(-1), expected[-1], atol=1e-5, rtol=1e-5)


def test_without_vocabulary_the_model_works_on_ids(tmp_path, capsys):
    torch.save(reference("gru-tied").state_dict(), tmp_path / "model.pt")
    assert seqzoo_main(["convert", "word-lm", str(tmp_path / "model.pt"), str(tmp_path / "out")]) == 0
    assert "no tokenizer: the model works on token ids" in capsys.readouterr().out
    assert not (tmp_path / "out" / "tokenizer_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.generate(IDS, attention_mask=torch.ones_like(IDS), max_new_tokens=3, do_sample=False).shape == (2, 10)


def test_pickled_module_is_refused_with_the_fix(tmp_path, capsys):
    torch.save(reference("lstm"), tmp_path / "model.pt")  # what the example's main.py does
    assert seqzoo_main(["convert", "word-lm", str(tmp_path / "model.pt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pickled Python objects" in err and "torch.save(model.state_dict(), 'model-state_dict.pt')" in err


@pytest.mark.parametrize(
    "make, kwargs, message",
    [
        (lambda sd: sd, {}, r"nn.RNN, whose state dict does not record its nonlinearity"),
        (lambda sd: {k.replace("rnn.", "gru."): v for k, v in sd.items()}, {"nonlinearity": "tanh"},
         r"missing 'rnn.weight_hh_l0' \(its modules: decoder, encoder, gru\); pass key_map"),
        (lambda sd: {**sd, "rnn.weight_ih_l0_reverse": torch.zeros(1)}, {"nonlinearity": "tanh"}, r"bidirectional"),
        (lambda sd: {k: v for k, v in sd.items() if k != "rnn.weight_hh_l1"}, {"nonlinearity": "tanh"},
         r"missing tensors rnn.weight_hh_l1"),
        (lambda sd: {**sd, "rnn.weight_ih_l1": torch.zeros(32, 5)}, {"nonlinearity": "tanh"},
         r"rnn.weight_ih_l1 \(source \(32, 5\), expected \(32, 32\)\)"),
        (lambda sd: {"pos_encoder.pe": torch.zeros(3), **sd}, {}, r"TransformerModel"),
        (lambda sd: sd, {"nonlinearity": "tanh", "hidden_size": 8}, r"cannot set hidden_size"),
        (lambda sd: {**sd, "rnn.weight_hh_l0": torch.zeros(32)}, {"nonlinearity": "tanh"},
         r"rnn.weight_hh_l0 has shape \(32,\); expected a non-empty matrix \(gates \* hidden size, hidden size\)"),
        (lambda sd: {**sd, "rnn.weight_hh_l0": torch.zeros(0, 0)}, {"nonlinearity": "tanh"},
         r"rnn.weight_hh_l0 has shape \(0, 0\); expected a non-empty matrix"),
        (lambda sd: {**sd, "encoder.weight": torch.zeros(99 * 24)}, {"nonlinearity": "tanh"},
         r"encoder.weight has shape \(2376,\); expected a non-empty matrix \(vocab, embedding size\)"),
        (lambda sd: {k: v for k, v in sd.items() if "weight_ih" not in k}, {"nonlinearity": "tanh"},
         r"missing tensors rnn.weight_ih_l0"),
        # one bias absent where the others are saved: damaged, not a layer built with bias=False (it took zeros)
        (lambda sd: {k: v for k, v in sd.items() if k != "rnn.bias_hh_l1"}, {"nonlinearity": "tanh"},
         r"missing tensors rnn.bias_hh_l1$"),
        (lambda sd: {**sd, "rnn.weight_hh_l0": torch.zeros(64, 32)}, {"nonlinearity": "tanh"},
         r"rnn.weight_hh_l0 has shape \(64, 32\): its rows must be 1, 3 or 4 times its columns"),
        (lambda sd: dict(reference("lstm").state_dict()), {"nonlinearity": "relu"},
         r"nonlinearity='relu' applies to nn.RNN only; the checkpoint is an nn.LSTM"),
    ],
    ids=["nonlinearity", "names", "bidirectional", "missing", "misshaped", "transformer", "sizes", "hh-1d", "hh-empty",
         "encoder-1d", "no-weight-ih", "one-bias-missing", "two-gates", "nonlinearity-of-an-lstm"],
)
def test_bad_sources_are_named(make, kwargs, message):
    state_dict = make(dict(reference("rnn-relu").state_dict()))
    with pytest.raises(ValueError, match=message):
        convert_word_lm(state_dict, **kwargs)


@pytest.mark.parametrize("hidden, message", [
    (lambda: (torch.zeros(3, 1, 32), torch.zeros(3, 1, 32)), r"shape \(3, 1, 32\); expected \(layers=2"),
    (lambda: {"h": torch.zeros(2, 1, 32)}, r"is h and c: 2 tensor\(s\).*got dict"),
], ids=["wrong-shape", "dict"])
def test_bad_hidden_file_is_refused_before_anything_is_written(hidden, message, tmp_path, capsys):
    torch.save(reference("lstm").state_dict(), tmp_path / "model.pt")
    torch.save(hidden(), tmp_path / "hidden.pt")
    assert seqzoo_main(["convert", "word-lm", str(tmp_path / "model.pt"), str(tmp_path / "out"), "--hidden",
                        str(tmp_path / "hidden.pt")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_integer_tensors_are_refused_naming_the_dtype():
    state_dict = {k: v.to(torch.int64) for k, v in reference("lstm").state_dict().items()}
    with pytest.raises(ValueError,
                       match=r"not floating point, or float8: encoder.weight \(int64\).*floating-point weights"):
        convert_word_lm(state_dict)


def test_hidden_state_of_the_wrong_shape_is_refused():
    model = convert_word_lm(reference("lstm").state_dict())
    with pytest.raises(ValueError, match=r"h and c"):
        hidden_to_cache(torch.zeros(2, 1, 32), model.config)
    with pytest.raises(ValueError, match=r"shape \(3, 1, 32\); expected \(layers=2"):
        hidden_to_cache((torch.zeros(3, 1, 32), torch.zeros(3, 1, 32)), model.config)
    # (h and c of other batch sizes failed inside the LSTM kernel at generate(); an integer state was kept as such)
    with pytest.raises(ValueError, match=r"h and c hold 2 and 3 sequences"):
        hidden_to_cache((torch.zeros(2, 2, 32), torch.zeros(2, 3, 32)), model.config)
    with pytest.raises(ValueError, match=r"hidden state 'h' has dtype torch.int64; expected a floating-point state"):
        hidden_to_cache((torch.zeros(2, 1, 32, dtype=torch.long), torch.zeros(2, 1, 32)), model.config)


def test_a_nested_training_checkpoint_names_the_entry_holding_the_weights(tmp_path):
    from seqzoo.conversions.checkpoints import load_torch_file

    weights = {"encoder.weight": torch.zeros(5, 3), "rnn.weight_hh_l0": torch.zeros(4, 4)}
    torch.save({"state_dict": weights, "epoch": 3}, tmp_path / "trained.pt")
    with pytest.raises(ValueError, match=r"holds a dict, not a state dict \(a dict of tensor names to tensors\); its "
                                         r"entry 'state_dict' is one: save that entry alone"):
        load_torch_file(tmp_path / "trained.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"holds a list, not a state dict \(a dict of tensor names to tensors\)$"):
        load_torch_file(tmp_path / "list.pt")


def test_a_vocabulary_file_with_a_byte_order_mark_or_not_utf8(tmp_path):
    from seqzoo.conversions.word_lm import word_tokenizer

    path = tmp_path / "vocab.txt"
    path.write_bytes(b"\xef\xbb\xbfthe\ncat\n<unk>\n")  # Notepad's UTF-8 starts with a BOM
    assert word_tokenizer(path)("the cat").input_ids == [0, 1]
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match=r"vocab\.txt' is not UTF-8 text"):
        word_tokenizer(path)
    path.write_text("the\ncat")  # no final newline: the last line is still a word
    assert word_tokenizer(path)("cat the").input_ids == [1, 0]
    for missing, why in ((tmp_path / "nope.txt", "No such file or directory"), (tmp_path, "Is a directory")):
        with pytest.raises(ValueError, match=rf"cannot read the vocabulary file '.*' \(--vocab\): {why}"):
            word_tokenizer(missing)


@pytest.mark.parametrize("words, message", [
    (["the", "cat", "the"], r"duplicates \['the'\]"),
    (["the", "", "cat"], r"empty, spaced or not text \[''\]"),
    (["the", "big cat"], r"empty, spaced or not text \['big cat'\]"),
    (["the", 7], r"empty, spaced or not text \[7\]"),  # (a TypeError from inside the check)
], ids=["duplicate", "empty", "spaced", "not-text"])
def test_a_vocabulary_that_is_no_list_of_distinct_words_is_refused(words, message):
    from seqzoo.conversions.word_lm import word_tokenizer

    assert word_tokenizer(["the", "cat"])("cat the").input_ids == [1, 0]
    with pytest.raises(ValueError, match=r"the vocabulary must hold distinct words without whitespace, one per id; "
                                         + message):
        word_tokenizer(words)


def test_the_text_generation_pipeline_puts_a_space_before_the_continuation(tmp_path):
    from transformers import pipeline

    torch.save(reference("gru-tied").state_dict(), tmp_path / "model.pt")
    words = ["<unk>", "<eos>", *[f"w{i}" for i in range(97)]]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    out = tmp_path / "out"
    assert seqzoo_main(["convert", "word-lm", str(tmp_path / "model.pt"), str(out), "--vocab",
                        str(tmp_path / "vocab.txt")]) == 0
    generator = pipeline("text-generation", model=str(out))
    text = generator("w3 w5", max_new_tokens=2, do_sample=False)[0]["generated_text"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([tokenizer("w3 w5")["input_ids"]])
    expected = tokenizer.decode(model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2,
                                               do_sample=False)[0])
    assert " " + text == expected  # (the prompt as written, then the new words each after a space)


@pytest.mark.parametrize("text", ["w0\nw1\n", "the\ncat\n", "hello there\n"])
def test_files_torch_cannot_read_are_named_without_advising_an_unsafe_load(tmp_path, capsys, text):
    # (torch's unpickler fails on text by the opcodes its first bytes happen to be: "pop from empty list" for
    # "the\ncat", "101" for "hello", which the checks of its error's wording did not recognise)
    (tmp_path / "vocab.txt").write_text(text)
    for command in ("word-lm", "rwkv7"):
        assert seqzoo_main(["convert", command, str(tmp_path / "vocab.txt"), str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "'" + str(tmp_path / "vocab.txt") + "' is not a PyTorch checkpoint (no torch.save file: text" in err
    torch.save(reference("lstm").state_dict(), tmp_path / "model.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")  # pickled objects
    for hidden, why in (("vocab.txt", "it is not a torch.save file"), ("module.pt", "it holds pickled Python objects")):
        assert seqzoo_main(["convert", "word-lm", str(tmp_path / "model.pt"), str(tmp_path / "out"), "--hidden",
                            str(tmp_path / hidden)]) == 2
        err = capsys.readouterr().err
        assert why in err and "weights_only" not in err, err  # (torch's own text advises weights_only=False)
    assert not (tmp_path / "out").exists()


def test_generate_names_a_word_a_vocabulary_without_unk_lacks(tmp_path, capsys):
    torch.save(reference("lstm").state_dict(), tmp_path / "model.pt")
    (tmp_path / "vocab.txt").write_text("\n".join(["<eos>", *[f"w{i}" for i in range(98)]]) + "\n")
    out = tmp_path / "out"
    assert seqzoo_main(["convert", "word-lm", str(tmp_path / "model.pt"), str(out), "--vocab",
                        str(tmp_path / "vocab.txt")]) == 0
    assert seqzoo_main(["generate", str(out), "w1 w2", "--max-new-tokens", "2", "--no-stream"]) == 0
    capsys.readouterr()
    assert seqzoo_main(["generate", str(out), "w1 foo w2", "--max-new-tokens", "2"]) == 2
    assert "the prompt holds a word that the vocabulary of" in capsys.readouterr().err


def test_a_key_map_entry_that_renames_nothing_is_refused(tmp_path, capsys):
    state_dict = {k.replace("rnn.", "lstm."): v for k, v in reference("lstm").state_dict().items()}
    convert_word_lm(state_dict, key_map={"lstm": "rnn"})
    with pytest.raises(ValueError, match=r"key_map renames 'lstn', which names no tensor and no module of the source "
                                         r"\(its modules: decoder, encoder, lstm\)"):
        convert_word_lm(state_dict, key_map={"lstn": "rnn", "lstm": "rnn"})
    torch.save(state_dict, tmp_path / "model.pt")
    assert seqzoo_main(["convert", "word-lm", str(tmp_path / "model.pt"), str(tmp_path / "out"), "--key-map",
                        "lstm=rnn", "lstm=gru"]) == 2
    assert "--key-map renames 'lstm' twice (lstm=rnn, lstm=gru)" in capsys.readouterr().err
    assert seqzoo_main(["convert", "word-lm", str(tmp_path / "model.pt"), str(tmp_path / "out"), "--key-map",
                        "lstm"]) == 2
    assert "--key-map entry 'lstm' is not of the form THEIRS=OURS" in capsys.readouterr().err


def test_a_key_map_renames_whole_keys_and_refuses_two_tensors_onto_one():
    state_dict = dict(reference("lstm").state_dict())
    state_dict["out_proj"] = state_dict.pop("decoder.weight")
    model = convert_word_lm(state_dict, key_map={"out_proj": "decoder.weight"})
    assert torch.equal(model.lm_head.weight, state_dict["out_proj"])
    with pytest.raises(ValueError, match=r"key_map maps two tensors onto 'decoder.weight'"):
        convert_word_lm({**state_dict, "decoder.weight": state_dict["out_proj"]},
                        key_map={"out_proj": "decoder.weight"})


def test_a_vocabulary_or_hidden_state_that_does_not_fit_is_refused_before_anything_is_written(tmp_path, capsys):
    torch.save(reference("lstm").state_dict(), tmp_path / "model.pt")
    (tmp_path / "vocab.txt").write_text("the\ncat\n<unk>\n")
    assert seqzoo_main(["convert", "word-lm", str(tmp_path / "model.pt"), str(tmp_path / "out"), "--vocab",
                        str(tmp_path / "vocab.txt")]) == 2
    assert "the vocabulary has 3 words, the checkpoint's embedding 99 rows; they must match" in capsys.readouterr().err
    assert seqzoo_main(["convert", "word-lm", str(tmp_path / "model.pt"), str(tmp_path / "out"), "--hidden",
                        str(tmp_path / "absent.pt")]) == 2
    assert f"hidden state file '{tmp_path / 'absent.pt'}' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_hidden_state_file_of_another_cell_is_named(tmp_path):
    from seqzoo.conversions.word_lm import save_hidden_state

    gru = convert_word_lm(reference("gru-tied").state_dict()).config
    lstm = convert_word_lm(reference("lstm").state_dict()).config
    save_hidden_state(torch.zeros(2, 1, 32), gru, tmp_path / "hidden_state.safetensors")
    with pytest.raises(ValueError, match=r"hidden_state.safetensors' is not a hidden state of this model: missing "
                                         r"'layers.0.c'"):
        load_hidden_state(tmp_path / "hidden_state.safetensors", lstm)


def test_a_hidden_state_file_holding_more_than_the_models_state_is_named(tmp_path):
    # An LSTM's (h, c) read by a GRU, or a 3-layer model's state read by a 2-layer one: the tensors beyond the
    # model's own were passed over, and the rest taken as its state.
    from seqzoo.conversions.word_lm import save_hidden_state

    gru = convert_word_lm(reference("gru-tied").state_dict()).config
    lstm = convert_word_lm(reference("lstm").state_dict()).config
    save_hidden_state((torch.zeros(2, 1, 32), torch.zeros(2, 1, 32)), lstm, tmp_path / "lstm.safetensors")
    with pytest.raises(ValueError, match=r"lstm.safetensors' is not a hidden state of this model: it holds "
                                         r"layers.0.c, layers.1.c, where an nn.GRU of 2 layers has h for layers 0-1"):
        load_hidden_state(tmp_path / "lstm.safetensors", gru)
    three = gru.__class__(**{**gru.to_dict(), "num_hidden_layers": 3})
    save_hidden_state(torch.zeros(3, 1, 32), three, tmp_path / "three.safetensors")
    with pytest.raises(ValueError, match=r"it holds layers.2.h, where an nn.GRU of 2 layers"):
        load_hidden_state(tmp_path / "three.safetensors", gru)
    save_hidden_state(torch.ones(2, 1, 32), gru, tmp_path / "gru.safetensors")
    assert load_hidden_state(tmp_path / "gru.safetensors", gru).layer(1)["h"].eq(1).all()
    # (safetensors' SafetensorError named no file: "Error while deserializing header: ...")
    (tmp_path / "damaged.safetensors").write_bytes((tmp_path / "gru.safetensors").read_bytes()[:-9])
    with pytest.raises(ValueError, match=r"cannot read '.*damaged.safetensors' as a hidden state saved by "
                                         r"save_hidden_state \(a safetensors file; damaged or truncated\?\)"):
        load_hidden_state(tmp_path / "damaged.safetensors", gru)
    with pytest.raises(ValueError, match=r"hidden state file '.*missing.safetensors' does not exist"):
        load_hidden_state(tmp_path / "missing.safetensors", gru)


def test_weights_packed_into_one_buffer_are_not_taken_for_tied():
    # The encoder and decoder as two views of one storage (packed into one buffer, as torch.save keeps views): the
    # storage was compared, not the tensors, and the decoder was dropped for the embedding.
    ref = WordLM("gru", ninp=32, nhid=32).eval()
    state = ref.state_dict()
    packed = torch.cat([state["encoder.weight"].flatten(), state["decoder.weight"].flatten()])
    state["encoder.weight"], state["decoder.weight"] = packed.view(2, *state["encoder.weight"].shape).unbind(0)
    model = convert_word_lm(state)
    assert not model.config.tie_word_embeddings
    torch.testing.assert_close(model.lm_head.weight, ref.decoder.weight, rtol=0, atol=0)
    tied = reference("gru-tied").state_dict()
    assert tied["encoder.weight"].data_ptr() == tied["decoder.weight"].data_ptr()
    assert convert_word_lm(tied).config.tie_word_embeddings
    # tied weights saved apart (a copy of the state dict, a file written without shared storage) are equal: tied
    copied = {key: value.clone() for key, value in tied.items()}
    assert convert_word_lm(copied).config.tie_word_embeddings


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_an_untied_decoder_of_the_embedding_s_shape_is_kept(cell):
    # ninp == nhid: the decoder has the embedding's shape but its own weights; it must not be taken for tied.
    torch.manual_seed(2)
    ref = WordLM(cell, ninp=32, nhid=32).eval()
    model = convert_word_lm(ref.state_dict())
    assert not model.config.tie_word_embeddings
    with torch.no_grad():
        expected, _ = ref(IDS.t())
        actual = model(IDS).logits.log_softmax(-1)
    torch.testing.assert_close(actual, expected.transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_the_checkpoints_dtype_is_kept_and_dropout_starts_unset():
    # (the example's dropout is not in its state dict: the converted model has none unless asked, and keeps the
    # dtype the checkpoint was saved in)
    state = {key: value.to(torch.float64) for key, value in reference("lstm").state_dict().items()}
    model = convert_word_lm(state)
    assert model.dtype == torch.float64 and model.config.dropout == 0.0
    assert convert_word_lm(state, dropout=0.3).config.dropout == 0.3
