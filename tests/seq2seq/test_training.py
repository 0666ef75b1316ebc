"""`task: seq2seq` recipes, `seqzoo generate` on an encoder-decoder folder, and the helpers around them: the built-in
tasks' pairs, JSON-lines data and its errors, a whole `seqzoo train` -> `seqzoo generate --show-attention` round
trip, and what transformers 5 offers (and does not) for text-to-text generation."""

from __future__ import annotations

import calendar
import json
import logging
import os
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from seqzoo.cli import main
from seqzoo.models.seq2seq.inspection import attention_map, seq2seq_generate
from seqzoo.tokenizer import EOS_TOKEN_ID, PAD_TOKEN_ID, byte_tokenizer
from seqzoo.training.seq2seq import DIGIT_WORDS, exact_match, jsonl_pairs, read_jsonl, seq2seq_logits, task_pairs
from tests.conftest import tiny_model

MONTHS = {name: number for number, name in enumerate(calendar.month_name) if name}


def _date_target(source: str) -> str:
    month, day, year = re.fullmatch(r"(\w+) (\d+), (\d{4})", source).groups()
    return f"{year}-{MONTHS[month]:02d}-{int(day):02d}"


EXPECTED = {
    "copy": lambda s: s,
    "reverse": lambda s: s[::-1],
    "sort": lambda s: "".join(sorted(s)),
    "digits": lambda s: "".join(str(DIGIT_WORDS.index(word)) for word in s.split(" ")),
    "dates": _date_target,
}


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_every_built_in_task_pairs_a_source_with_its_answer(task):
    data = task_pairs(task, [3, 6], symbols=5, eval_samples=8, seed=0)
    sets = data.eval_pairs()
    assert list(sets) == (["dates"] if task == "dates" else ["length=3", "length=6"])
    pairs = [pair for pairs in sets.values() for pair in pairs] + data._train(0, 16)
    for source, target in pairs:
        assert target == EXPECTED[task](source), (source, target)
    if task in ("copy", "reverse", "sort"):
        assert all(set(source) <= set("abcde") for source, _ in pairs)
        assert {len(source) for source, _ in sets["length=6"]} == {6}
    if task == "digits":
        assert {len(target) for _, target in sets["length=3"]} == {3}  # the length counts digits
    assert data.eval_pairs() == task_pairs(task, [3, 6], 5, 8, seed=0).eval_pairs()  # seeded
    assert data._train(1, 16) != data._train(2, 16)


def test_trained_share_counts_the_evaluation_sources_training_also_drew():
    # 2 symbols at length 2 have 4 sources: 20 batches of 8 draw them all; 6 symbols at length 9 almost never repeat.
    data = task_pairs("reverse", [2, 9], symbols=2, eval_samples=6, seed=0)
    drawn = {source for step in range(20) for source, _ in data._train(step, 8)}
    share = data.trained_share(20, 8)
    assert share == {name: sum(s in drawn for s, _ in pairs) / 6 for name, pairs in data.eval_pairs().items()}
    assert share["length=2"] == 1.0 and share["length=9"] < 0.5
    assert data.trained_share(0, 8) == {"length=2": 0.0, "length=9": 0.0}


def test_a_batch_is_right_padded_sources_and_targets_ending_in_eos():
    data = task_pairs("reverse", [2], 4, 1, 0)
    sources, labels = data.batch([("abc", "cba"), ("d", "d")])
    assert sources.tolist() == [[97, 98, 99], [100, PAD_TOKEN_ID, PAD_TOKEN_ID]]
    assert labels.tolist() == [[99, 98, 97, EOS_TOKEN_ID], [100, EOS_TOKEN_ID, -100, -100]]


def test_long_sources_are_cut_at_max_source_length_with_one_warning(caplog):
    data = task_pairs("copy", [8], 4, 1, 0, max_source_length=5)
    with caplog.at_level(logging.WARNING, logger="seqzoo.training"):
        sources, labels = data.batch([("abcdefgh", "abcdefgh"), ("ab", "ab")])
        data.batch([("abcdefgh", "abcdefgh")])
    assert sources.shape == (2, 5) and labels.shape == (2, 9)  # the target is never cut
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "1 of 2 sources" in warnings[0] and "max_source_length=5" in warnings[0]


def write_pairs(path, count=40):
    words = ["abc", "hello", "seq", "zoo", "attend", "bridge", "decode", "encode"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(count):
            word = words[i % len(words)]
            f.write(json.dumps({"source": word, "target": word[::-1]}) + "\n")
    return path


@pytest.mark.parametrize("line, message", [
    ("{not json", r"pairs.jsonl:2 is not valid JSON"),
    # (json keeps the last of a key given twice: the pair was trained with the second target)
    ('{"source": "a", "target": "b", "target": "c"}', r"pairs.jsonl:2: key 'target' is given twice in one object"),
    ('{"source": "a"}', r'pairs.jsonl:2: expected an object with string fields "source" and "target"'),
    ('{"source": "a", "target": 3}', r"expected an object with string fields"),
    ('["a", "b"]', r"expected an object with string fields"),
    ('{"source": "", "target": "b"}', r"pairs.jsonl:2: an empty source cannot be trained on"),
    ('{"source": "a", "target": "b<|endoftext|>"}', r"pairs.jsonl:2 \(target\): the text holds '<\|endoftext\|>'"),
    # a lone surrogate (a JSON escape can hold one) crashed the tokenizer with a bare UnicodeEncodeError
    ('{"source": "a\\ud800", "target": "b"}', r"pairs.jsonl:2 \(source\): the text holds .\\ud800. at character 1"),
])
def test_bad_jsonl_lines_are_named(tmp_path, line, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"source": "a", "target": "b"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_jsonl(path)


def test_an_empty_target_trains_the_model_to_end_at_once(tmp_path):
    # It was refused as untrainable ("an empty source or target cannot be trained on"): its labels are EOS alone.
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"source": "ab", "target": ""}\n{"source": "c", "target": "d"}\n')
    assert read_jsonl(path) == [("ab", ""), ("c", "d")]
    data = jsonl_pairs(str(path), 0.5, 8, seed=0)
    sources, labels = data.batch([("ab", ""), ("c", "d")])
    assert labels.tolist() == [[EOS_TOKEN_ID, -100], [ord("d"), EOS_TOKEN_ID]]
    model = tiny_model("seq2seq-luong-general-tiny", vocab_size=258, pad_token_id=256, bos_token_id=257,
                       eos_token_id=257)
    logits = seq2seq_logits(model, sources, labels)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    loss.backward()
    assert torch.isfinite(loss)


def test_jsonl_files_that_cannot_train(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no pairs"):
        read_jsonl(tmp_path / "empty.jsonl")
    (tmp_path / "one.jsonl").write_text('{"source": "a", "target": "b"}\n')
    with pytest.raises(ValueError, match="hold 1 pair.*too few"):
        jsonl_pairs(str(tmp_path / "one.jsonl"), 0.05, 8, 0)


def test_jsonl_holds_out_the_tail_and_visits_every_training_pair_each_epoch(tmp_path):
    data = jsonl_pairs(str(write_pairs(tmp_path / "pairs.jsonl", 40)), 0.1, 100, seed=0)
    pairs = read_jsonl(tmp_path / "pairs.jsonl")
    assert data.eval_pairs()["validation"] == pairs[36:]  # fewer held out than eval_samples: every one of them
    spread = jsonl_pairs(str(tmp_path / "pairs.jsonl"), 0.5, 4, seed=0)  # 20 held out, 4 scored: spread over them
    assert spread.eval_pairs()["validation"] == [pairs[i] for i in (20, 25, 30, 35)]
    epoch = [pair for step in range(9) for pair in data._train(step, 4)]  # 36 training pairs, batches of 4
    assert sorted(epoch) == sorted(read_jsonl(tmp_path / "pairs.jsonl")[:36])


def test_a_pair_longer_than_the_models_positions_is_named_before_training(tmp_path):
    # A source is cut at data.max_source_length, a target never: the run stopped at the step that first drew it.
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(pair) + "\n" for pair in [{"source": "abc", "target": "cba"}] * 5
                            + [{"source": "x" * 30, "target": "y"}, {"source": "y", "target": "z" * 30}]))
    with pytest.raises(ValueError, match=r"pair 6 has a source of 30 tokens, longer than the 16 positions .* set "
                                         r"data.max_source_length=16"):
        jsonl_pairs(str(path), 0.1, 8, seed=0).check_fits(16)
    with pytest.raises(ValueError, match=r"pair 7 has a target of 31 tokens with its EOS, longer than the 16 "
                                         r"positions .* targets are never cut"):
        jsonl_pairs(str(path), 0.1, 8, seed=0, max_source_length=16).check_fits(16)
    jsonl_pairs(str(path), 0.1, 8, seed=0, max_source_length=16).check_fits(31)


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_a_generated_task_longer_than_the_models_positions_is_named_before_training(task):
    # Only a file's pairs were measured: a task's long pairs stopped the run at the step that drew them, in the
    # model's forward, naming a position but no setting.
    data = task_pairs(task, [3, 30, 3], 10, 64, seed=0)  # (a length listed twice has one evaluation set)
    pairs = [pair for step in range(20) for pair in data._train(step, 16)]
    pairs += [pair for rows in data.eval_pairs().values() for pair in rows]
    source, target = max(data.longest.values())  # (the longest source length's)
    assert max(len(s.encode()) for s, _ in pairs) <= source and max(len(t.encode()) for _, t in pairs) <= target
    assert source == (len("September 30, 1999") if task == "dates" else 179 if task == "digits" else 30)
    limit = max(source, target + 1)  # a target is read with its EOS
    data.check_fits(limit)
    with pytest.raises(ValueError, match=r"seq2seq-task:.*: the longest pair of (length=30|dates) has a (source|target)"
                                         r" of .* tokens.*, longer than the"):
        data.check_fits(limit - 1)
    if target + 1 < source:  # a source cut at max_source_length fits
        task_pairs(task, [3, 30, 3], 10, 64, seed=0, max_source_length=target + 1).check_fits(target + 1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`seqzoo train` on a JSON-lines file, through the command line, into a folder."""
    root = tmp_path_factory.mktemp("s2s")
    recipe = root / "recipe.yaml"
    recipe.write_text(
        "name: pairs\ntask: seq2seq\n"
        "model:\n  preset: seq2seq-luong-general-tiny\n  config: {hidden_size: 24, num_hidden_layers: 1}\n"
        f"data:\n  source: jsonl\n  path: {write_pairs(root / 'pairs.jsonl')}\n  max_source_length: 16\n"
        "optim:\n  lr: 0.01\n  warmup_steps: 2\n"
        "train:\n  max_steps: 4\n  batch_size: 8\n  eval_every: 0\n  log_every: 100\n")
    assert main(["train", str(recipe), "--output-dir", str(root / "run"), "--no-progress"]) == 0
    return root / "run"


def test_seqzoo_train_writes_a_folder_that_generate_reads(trained, capsys):
    model = AutoModelForSeq2SeqLM.from_pretrained(trained)
    assert model.config.hidden_size == 24 and model.config.attention == "luong-general"
    capsys.readouterr()
    assert main(["generate", str(trained), "hello", "--max-new-tokens", "6", "--no-stream"]) == 0
    printed = capsys.readouterr().out.strip()
    tokenizer = byte_tokenizer()
    assert printed == seq2seq_generate(model.eval(), tokenizer, "hello", max_new_tokens=6)[0].strip()
    # Options for a causal LM's decode step are refused by name.
    assert main(["generate", str(trained), "hello", "--compile", "eager"]) == 2
    assert "--compile compiles a causal language model's decode step" in capsys.readouterr().err
    for extra in ([], ["--show-attention"]):
        assert main(["generate", str(trained), "hello", "--head-layout", "columns", *extra]) == 2
        assert "--head-layout columns lays out a causal language model's weights" in capsys.readouterr().err
        assert main(["generate", str(trained), "hello", "--weight-layout", "columns", *extra]) == 2
        assert "--weight-layout columns lays out a causal language model's weights" in capsys.readouterr().err


def test_generate_show_attention_prints_and_plots_the_weights(trained, tmp_path, capsys):
    plot = tmp_path / "attention.png"
    capsys.readouterr()
    assert main(["generate", str(trained), "abc", "--show-attention", "--target", "cb",
                 "--attention-plot", str(plot)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if " | " in line]
    assert rows[0].split("|")[1].split() == ["a", "b", "c"]  # one column per source token
    assert [row.split("|")[0].strip() for row in rows[1:]] == ["c", "b", "<eos>"]  # one row per target token
    printed = torch.tensor([[float(x) for x in row.split("|")[1].split()] for row in rows[1:]])
    model = AutoModelForSeq2SeqLM.from_pretrained(trained).eval()
    tokenizer = byte_tokenizer()
    source = tokenizer("abc", return_tensors="pt")
    with torch.no_grad():
        weights = model(**source, decoder_input_ids=torch.tensor([[EOS_TOKEN_ID, 99, 98]]),
                        output_attentions=True).cross_attentions[0][0, 0]  # (T, S)
    torch.testing.assert_close(printed, weights, rtol=0, atol=0.006)  # printed to 2 decimals
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["generate", str(trained), "abc", "--show-attention", "--max-new-tokens", "3"]) == 0
    assert "(greedy)" in capsys.readouterr().out
    # The map follows the greedy decode: beams or sampling asked beside it are refused, not ignored.
    for flags in (["--num-beams", "3"], ["--temperature", "0.7"]):
        assert main(["generate", str(trained), "abc", "--show-attention", *flags]) == 2
        assert f"error: {flags[0]} cannot go with --show-attention" in capsys.readouterr().err
    # A plot path matplotlib cannot write is refused before the table is printed (it failed after it).
    # A folder (existing, or named by a trailing "/") failed in savefig only after the table.
    (tmp_path / "plots.png").mkdir()
    (tmp_path / "notes.txt").write_text("")
    for path, message in ((tmp_path / "map.txt", ".txt names no image format; use one of"),
                          (tmp_path / "no-such-folder" / "map.png", "does not exist"),
                          (tmp_path / "plots.png", "it is a folder; name the image file, e.g. "),
                          (f"{tmp_path / 'new.png'}/", "it ends with '/', naming a folder; name the image file"),
                          (tmp_path / "notes.txt" / "map.png", "notes.txt' is a file, not a folder")):
        assert main(["generate", str(trained), "abc", "--show-attention", "--attention-plot", str(path)]) == 2
        captured = capsys.readouterr()
        assert f"error: --attention-plot: cannot write a plot to {str(path)!r}" in captured.err
        assert message in captured.err and " | " not in captured.out


def test_show_attention_refuses_a_language_model_and_a_model_without_attention(tmp_path, capsys):
    folder = tmp_path / "lm"
    assert main(["new", "gru-tiny", str(folder), "--set", "hidden_size=16"]) == 0
    capsys.readouterr()
    assert main(["generate", str(folder), "ab", "--show-attention"]) == 2
    assert "need an encoder-decoder (seq2seq) model" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"no attention over its source \(attention='none'\)"):
        attention_map(tiny_model("seq2seq-sutskever-tiny"), byte_tokenizer(), "abc")


@pytest.mark.skipif(not Path("/proc").is_dir() or os.access("/proc", os.W_OK) is False,
                    reason="needs /proc, which os.access calls writable (as root)")
def test_a_plot_folder_that_takes_no_file_is_refused_before_the_decode():
    # os.access answers yes to root for /proc and /sys: the plot failed after the decode, /proc's as "No such file
    # or directory". A file is made and removed beside it instead.
    from seqzoo.models.seq2seq.inspection import check_plot_path

    with pytest.raises(ValueError, match=r"cannot write a plot to '/proc/map.png': the folder '/proc' takes no new "
                                         r"file \("):
        check_plot_path("/proc/map.png")


def test_a_plot_check_leaves_nothing_behind(tmp_path):
    from seqzoo.models.seq2seq.inspection import check_plot_path

    check_plot_path(tmp_path / "map.png")
    assert list(tmp_path.iterdir()) == []


def test_plotting_an_attention_map_leaves_the_callers_matplotlib_backend_and_figures(tmp_path):
    """AttentionMap.plot draws on a figure of its own: it called matplotlib.use("Agg"), which switched the caller's
    backend (a notebook's inline one, an interactive window's) to Agg for the rest of the session."""
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    model = tiny_model("seq2seq-bahdanau-tiny", vocab_size=258, pad_token_id=256, bos_token_id=257,
                       eos_token_id=257, decoder_start_token_id=257)
    found = attention_map(model, byte_tokenizer(), "a b", target="xy")
    previous = matplotlib.get_backend()
    plt.switch_backend("svg")  # (the caller's, other than Agg)
    try:
        figures = plt.get_fignums()
        assert found.plot(tmp_path / "map.png").stat().st_size > 0
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == figures
    finally:
        plt.switch_backend(previous)


def test_attention_map_of_a_given_target_is_the_models_cross_attention():
    model = tiny_model("seq2seq-bahdanau-tiny", vocab_size=258, pad_token_id=256, bos_token_id=257,
                       eos_token_id=257, decoder_start_token_id=257)
    tokenizer = byte_tokenizer()
    found = attention_map(model, tokenizer, "a b", target="xy")
    assert found.source_tokens == ["a", "␣", "b"] and found.target_tokens == ["x", "y", "<eos>"]
    with torch.no_grad():
        want = model(**tokenizer("a b", return_tensors="pt"), decoder_input_ids=torch.tensor([[257, 120, 121]]),
                     output_attentions=True).cross_attentions[0][0, 0]
    torch.testing.assert_close(found.weights, want)
    assert [source for _, source, _ in found.favourite()] == [found.source_tokens[j] for j in want.argmax(-1)]
    empty = attention_map(model, tokenizer, "a b", target="")  # only the end of the sequence is predicted
    assert empty.target_tokens == ["<eos>"] and empty.weights.shape == (1, 3)
    for where, message in (({"layer": 1}, "layer=1 is out of range"), ({"head": 1}, "head=1 is out of range"),
                           # (True was head 1, 1.0 an IndexError from torch)
                           ({"head": True}, r"head=True is invalid: expected an integer index, or None"),
                           ({"head": 0.0}, r"head=0.0 is invalid"), ({"layer": "0"}, r"layer='0' is invalid")):
        with pytest.raises(ValueError, match=message):
            attention_map(model, tokenizer, "a b", target="xy", **where)
    with pytest.raises(ValueError, match="needs at least one source"):
        seq2seq_generate(model, tokenizer, [])
    # (it returns text: an explicit return_dict_in_generate=True was overridden without a word)
    with pytest.raises(ValueError, match=r"seq2seq_generate returns the decoded texts; .*return_dict_in_generate"):
        seq2seq_generate(model, tokenizer, ["a b"], return_dict_in_generate=True)


def test_seq2seq_generate_decodes_each_source_of_a_padded_batch_as_alone():
    model = tiny_model("seq2seq-luong-dot-tiny", vocab_size=258, pad_token_id=256, bos_token_id=257,
                       eos_token_id=257, decoder_start_token_id=257)
    tokenizer = byte_tokenizer()
    sources = ["a much longer source", "ab"]
    together = seq2seq_generate(model, tokenizer, sources, max_new_tokens=5)
    assert together == [seq2seq_generate(model, tokenizer, source, max_new_tokens=5)[0] for source in sources]
    ids = model.generate(**tokenizer("ab", return_tensors="pt"), max_new_tokens=5, do_sample=False,
                         pad_token_id=256)
    assert together[1] == tokenizer.decode(ids[0], skip_special_tokens=True)


def test_exact_match_counts_whole_targets_ending_in_eos(monkeypatch):
    model = tiny_model("seq2seq-luong-dot-tiny", vocab_size=258, pad_token_id=256, bos_token_id=257,
                       eos_token_id=257, decoder_start_token_id=257)
    produced = torch.tensor([[EOS_TOKEN_ID, 99, 98, 97, EOS_TOKEN_ID, PAD_TOKEN_ID]])  # start, "cba", end, pad
    monkeypatch.setattr(model, "generate",
                        lambda sources, **kwargs: produced[:, : kwargs["max_new_tokens"] + 1].expand(len(sources), -1))
    assert exact_match(model, [("abc", "cba")]) == 1.0
    assert exact_match(model, [("abc", "cb")]) == 0.0  # a prefix: the model did not stop there
    assert exact_match(model, [("abc", "cbaa")]) == 0.0
    assert exact_match(model, [("abc", "cba"), ("abc", "abc"), ("abc", "cba"), ("abc", "c")]) == 0.5


def test_transformers_5_has_no_text_to_text_pipeline():
    """The README and the model card say so and point to seq2seq_generate: re-check on every release. The
    text-generation pipeline does not refuse an encoder-decoder, but treats the output as the prompt continued:
    it cuts as many tokens off the target as the source has."""
    from transformers import pipeline

    model = tiny_model("seq2seq-luong-dot-tiny", vocab_size=258, pad_token_id=256, bos_token_id=257,
                       eos_token_id=257, decoder_start_token_id=257)
    tokenizer = byte_tokenizer()
    for task in ("text2text-generation", "translation", "summarization"):
        with pytest.raises(KeyError, match="has been removed"):
            pipeline(task, model=model, tokenizer=tokenizer)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    source = "abcdefgh"
    wrong = generator(source, max_new_tokens=6, do_sample=False, return_full_text=False)[0]["generated_text"]
    right = seq2seq_generate(model, tokenizer, source, max_new_tokens=6)[0]
    assert wrong != right and len(wrong) < len(source)


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    # json.dumps(ensure_ascii=False) leaves U+2028 and U+0085 unescaped; a JSON line ends at "\n" only.
    path = tmp_path / "pairs.jsonl"
    rows = [{"source": "a\u2028b", "target": "c\x85d"}, {"source": "e", "target": "f"}]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\r\n" for row in rows), encoding="utf-8")
    assert read_jsonl(path) == [("a\u2028b", "c\x85d"), ("e", "f")]


def test_tokens_seen_counts_what_the_model_read_not_padding():
    # tokens_seen (and the throughput) counted a seq2seq batch's padded sources only: its pads, and none of the
    # targets its decoder reads. A labelled batch's padding is left out too; a corpus row has none.
    from seqzoo.training.classification import LabelledTexts
    from seqzoo.training.trainer import tokens_read

    data = task_pairs("reverse", [2], 4, 1, 0)
    sources, labels = data.batch([("abc", "cba"), ("d", "d")])
    assert tokens_read(data, sources, labels) == (3 + 1) + (4 + 2)  # the sources' bytes, the targets' and their EOS
    texts = LabelledTexts("sequence-classification", lambda *_: [], {}, ["a", "b"], "t", None, {})
    inputs, targets = texts.batch([("abc", "a"), ("d", "b")])
    assert inputs.numel() == 6 and tokens_read(texts, inputs, targets) == 4
    window = torch.randint(0, 256, (2, 5))
    assert tokens_read(object(), window, window) == 10
