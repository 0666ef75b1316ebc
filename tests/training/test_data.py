"""Data sources: memory tasks put the answer where the task says, batches are a function of (seed, step), corpora
tokenise like the byte tokenizer, and bad files get clear errors."""

from __future__ import annotations

import pytest
import torch

from seqzoo.tokenizer import byte_tokenizer
from seqzoo.training.data import (
    BLANK,
    FIRST_SYMBOL,
    GO,
    IGNORE,
    MemoryTask,
    TokenStream,
    build_data,
    dataset_documents,
    pydoc_documents,
    read_text_file,
    task_length,
    tokens_from_documents,
)
from seqzoo.training.recipe import recipe_from_dict


def _answers(inputs, targets):
    scored = targets != IGNORE
    return scored, targets[scored].view(inputs.shape[0], -1)


def test_copy_answers_are_the_first_symbols_after_the_gap():
    task = MemoryTask("copy", [5], symbols=10, items=3, seq_len=None, eval_samples=4, seed=0)
    inputs, targets = task.eval_sets()["distance=5"]
    assert inputs.shape == (4, task_length("copy", 5, 3)) == (4, 11)
    _, answers = _answers(inputs, targets)
    torch.testing.assert_close(answers, inputs[:, :3])  # what was shown first must come back
    assert (inputs[:, 3:8] == BLANK).all() and (inputs[:, 8] == GO).all()


@pytest.mark.parametrize("distance", [1, 3, 9])
def test_selective_copy_returns_the_scattered_symbols_in_order(distance):
    """The symbols lie among `distance` blanks, as copy's lie before its `distance` blanks (the region once was
    `distance` tokens long, symbols included: at distance == items it held no blank at all)."""
    task = MemoryTask("selective_copy", [distance], symbols=10, items=3, seq_len=None, eval_samples=50, seed=1)
    inputs, targets = task.eval_sets()[f"distance={distance}"]
    assert inputs.shape[1] == task_length("selective_copy", distance, 3) == task_length("copy", distance, 3)
    _, answers = _answers(inputs, targets)
    region = inputs[:, :distance + 3]  # the region before "go" (inputs end: region, go, 2 of 3 answers)
    assert (inputs[:, distance + 3] == GO).all()
    assert ((region == BLANK).sum(dim=1) == distance).all()
    # (the region is distance + k tokens wide: its farthest position, distance + k before go, holds a symbol in some
    # samples; a region a token shorter behind a blank of the row's fill held the same count of blanks)
    assert (region[:, 0] >= FIRST_SYMBOL).any()
    for row in range(50):
        assert region[row][region[row] >= FIRST_SYMBOL].tolist() == answers[row].tolist()


def test_associative_recall_asks_every_key_once():
    task = MemoryTask("associative_recall", [4], symbols=12, items=5, seq_len=None, eval_samples=6, seed=2)
    inputs, targets = task.eval_sets()["distance=4"]
    pairs = inputs[:, :10].reshape(6, 5, 2)
    _, answers = _answers(inputs, targets)
    for row in range(6):
        table = dict(pairs[row].tolist())
        assert len(table) == 5  # keys are distinct
        queried = inputs[row, -9::2].tolist()  # the queried keys (the last value is only a target)
        assert sorted(queried) == sorted(table)
        assert answers[row].tolist() == [table[k] for k in queried]


def test_induction_answer_follows_the_second_cue():
    task = MemoryTask("induction", [6], symbols=10, items=2, seq_len=None, eval_samples=3, seed=3)
    inputs, targets = task.eval_sets()["distance=6"]
    _, answers = _answers(inputs, targets)
    torch.testing.assert_close(answers, inputs[:, 1:3])
    assert (inputs[:, 0] == GO).all() and (inputs[:, 9] == GO).all()


def test_batches_are_a_function_of_seed_and_step_and_mix_distances():
    task = MemoryTask("copy", [2, 20], symbols=8, items=2, seq_len=None, eval_samples=2, seed=0)
    a, b = task.train_batch(5, 64), task.train_batch(5, 64)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(task.train_batch(6, 64)[0], a[0])
    assert {int((row == GO).nonzero()[0]) for row in a[0]} == {a[0].shape[1] - 2}  # right-aligned
    starts = {int((row != BLANK).nonzero()[0]) for row in a[0]}
    assert starts == {0, 18}  # both distances (20 and 2) occur in one batch
    other_seed = MemoryTask("copy", [2, 20], symbols=8, items=2, seq_len=None, eval_samples=2, seed=1)
    assert not torch.equal(other_seed.train_batch(5, 64)[0], a[0])
    assert a[0].max() < task.vocab_size == FIRST_SYMBOL + 8


@pytest.mark.parametrize("mix", ["batch", "sample"])
def test_trained_share_counts_the_evaluation_sequences_training_also_drew(mix):
    # Counted here by comparing tensors row by row, not by the method's byte keys.
    task = MemoryTask("copy", [2, 6], symbols=3, items=2, seq_len=None, eval_samples=40, seed=0, distance_mix=mix)
    steps, batch = 5, 4
    drawn = [task.train_batch(step, batch) for step in range(steps)]
    expected = {}
    for name, (inputs, targets) in task.eval_sets().items():
        found = [any(torch.equal(inputs[i], a[j]) and torch.equal(targets[i], b[j])  # (rows of another length: no)
                     for a, b in drawn for j in range(a.shape[0])) for i in range(inputs.shape[0])]
        expected[name] = sum(found) / len(found)
    share = task.trained_share(steps, batch)
    assert share == expected
    assert 0.0 < share["distance=2"] < 1.0  # nine possible contents, twenty training draws: some, not all
    assert task.trained_share(0, batch) == {"distance=2": 0.0, "distance=6": 0.0}
    assert task.trained_share(200, batch) == {"distance=2": 1.0, "distance=6": 1.0}  # every content drawn by then
    # Where contents are many (induction's random filler), nothing is shared.
    wide = MemoryTask("induction", [16], symbols=8, items=4, seq_len=None, eval_samples=20, seed=0)
    assert wide.trained_share(50, 16) == {"distance=16": 0.0}


def test_a_tasks_tuning_set_is_drawn_apart_from_its_evaluation_set_and_training_is_the_same():
    kwargs = dict(symbols=8, items=3, seq_len=None, eval_samples=16, seed=0)
    plain = MemoryTask("induction", [4, 16], **kwargs)
    tuning = MemoryTask("induction", [4, 16], **kwargs, tuning_set=True)
    for name, (inputs, targets) in tuning.eval_sets().items():
        other_inputs, other_targets = plain.eval_sets()[name]
        assert inputs.shape == other_inputs.shape and not torch.equal(inputs, other_inputs)
        assert torch.equal(targets != IGNORE, other_targets != IGNORE)  # the same task, other draws
    for step in range(3):
        assert all(torch.equal(a, b) for a, b in zip(plain.train_batch(step, 8), tuning.train_batch(step, 8)))
    assert "tuning_set" not in plain.describe() and tuning.describe()["tuning_set"] is True


def test_a_corpus_tuning_set_is_the_block_before_the_held_out_tail_and_training_reads_neither():
    tokens = torch.arange(1000)  # each token its own position: what is read shows where it was read
    plain = TokenStream(tokens, "t", seq_len=10, eval_fraction=0.1, eval_samples=4, seed=0)
    tuning = TokenStream(tokens, "t", seq_len=10, eval_fraction=0.1, eval_samples=4, seed=0, tuning_set=True)
    assert torch.equal(plain.eval_tokens, tokens[900:])
    assert torch.equal(tuning.eval_tokens, tokens[800:900]) and torch.equal(tuning.train_tokens, tokens[:800])
    inputs, _ = tuning.eval_sets()["validation"]
    assert torch.equal(inputs[0], tokens[800:810]) and int(inputs.max()) < 900
    # Two epochs of training (79 windows each) read nothing from position 800 on.
    seen = torch.cat([torch.cat(tuning.train_batch(step, 16), dim=1).flatten() for step in range(10)])
    assert int(seen.max()) < 800 and len(set(seen.tolist())) > 700
    assert "tuning_set" not in plain.describe() and tuning.describe()["tuning_set"] is True
    with pytest.raises(ValueError, match="longer than the tuning split"):
        TokenStream(tokens[:230], "t", seq_len=10, eval_fraction=0.04, eval_samples=1, seed=0, tuning_set=True)


def test_task_errors_name_the_problem():
    with pytest.raises(ValueError, match="data.seq_len=10 is shorter than task 'copy' needs at distance 20"):
        MemoryTask("copy", [20], symbols=8, items=2, seq_len=10, eval_samples=2, seed=0)
    with pytest.raises(ValueError, match="items=5 needs items <= symbols // 2 distinct keys; symbols=8"):
        MemoryTask("associative_recall", [4], symbols=8, items=5, seq_len=None, eval_samples=2, seed=0)
    with pytest.raises(ValueError, match="unknown task 'recall'"):
        MemoryTask("recall", [4], symbols=8, items=2, seq_len=None, eval_samples=2, seed=0)


def test_text_tokens_match_the_byte_tokenizer():
    docs = ["héllo wörld", "def f():\n    return 1"]
    tokenizer = byte_tokenizer()
    expected = []
    for doc in docs:
        expected += tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]
    assert tokens_from_documents(docs).tolist() == expected


def test_special_token_text_in_a_document_is_read_as_the_tokenizer_reads_it():
    # A corpus that separates its documents with the text <|endoftext|> (TinyStories' .txt files): the tokenizer
    # reads it as EOS, so training must too (else packing never splits there and the model never learns EOS).
    docs = ["Once upon a time.<|endoftext|>The end.", "ab<|endoftext|><|endoftext|>c", "<|endoftext", "é<|endoftext|>"]
    tokenizer = byte_tokenizer()
    expected = []
    for doc in docs:
        expected += tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]
    assert tokens_from_documents(docs).tolist() == expected
    assert expected.count(tokenizer.eos_token_id) == 8
    # The padding token's text would train the model to predict padding: refused, naming the document.
    with pytest.raises(ValueError, match=r"document 1 of the corpus holds the text '<\|pad\|>'"):
        tokens_from_documents(["fine", "a<|pad|>b"])
    # A Python string (a dataset given to train()) can hold a lone surrogate, which has no UTF-8 bytes.
    with pytest.raises(ValueError, match=r"document 1 of the corpus: the text holds '\\udc80' at character 1, a lone "
                                         r"surrogate"):
        tokens_from_documents(["fine", "a\udc80"])


def test_token_stream_epochs_visit_every_window_once():
    tokens = torch.arange(1001, dtype=torch.int16) % 250
    stream = TokenStream(tokens, "t", seq_len=10, eval_fraction=0.1, eval_samples=4, seed=0)
    assert stream.num_samples == 89
    starts = []
    for step in range(89):  # batch 1: one epoch is 89 steps
        inputs, targets = stream.train_batch(step, 1)
        assert torch.equal(inputs[0, 1:], targets[0, :-1])  # targets are the next tokens
        starts.append(int(inputs[0, 0]))
    assert sorted(starts) == sorted(int(tokens[i * 10]) for i in range(89))
    assert stream.eval_sets()["validation"][0].shape == (4, 10)


def test_a_corpus_scores_windows_spread_over_its_held_out_tail():
    # The first eval_samples windows alone were one stretch of the tail (in the lab's pydoc text, an ASCII table).
    tokens = torch.arange(1001)  # each token its own position
    stream = TokenStream(tokens, "t", seq_len=10, eval_fraction=0.2, eval_samples=4, seed=0)  # 20 windows held out
    inputs, targets = stream.eval_sets()["validation"]
    assert inputs[:, 0].tolist() == [800, 850, 900, 950] and torch.equal(targets, inputs + 1)
    every = TokenStream(tokens, "t", seq_len=10, eval_fraction=0.2, eval_samples=50, seed=0)
    assert every.eval_sets()["validation"][0][:, 0].tolist() == list(range(800, 1000, 10))


def test_sequence_longer_than_the_data_is_an_error():
    with pytest.raises(ValueError, match=r"data.seq_len=500 is longer than the training split of t \(450 tokens "):
        TokenStream(torch.zeros(500, dtype=torch.int16), "t", seq_len=500, eval_fraction=0.1, eval_samples=1, seed=0)
    with pytest.raises(ValueError, match=r"longer than the evaluation split of t \(50 tokens"):
        TokenStream(torch.zeros(500, dtype=torch.int16), "t", seq_len=60, eval_fraction=0.1, eval_samples=1, seed=0)


def test_text_file_errors(tmp_path):
    with pytest.raises(ValueError, match=r"data file '.*nope.txt' does not exist"):
        read_text_file(tmp_path / "nope.txt")
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"abc\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"is not UTF-8 text: byte 0xff at offset 3 \(line 1\) is invalid"):
        read_text_file(binary)
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"ab\x00cd")
    with pytest.raises(ValueError, match=r"is not text: it holds NUL bytes \(first at character 2, line 1\)"):
        read_text_file(nul)
    # The line too, where a JSON-lines file of many rows is looked at by line (its own errors name lines).
    binary.write_bytes(b'{"a": 1}\r\n{"a": 2}\n{"a": "\xe9"}\n')
    with pytest.raises(ValueError, match=r"byte 0xe9 at offset 26 \(line 3\) is invalid"):
        read_text_file(binary)
    nul.write_bytes("é\n\n\nab\x00cd".encode())
    with pytest.raises(ValueError, match=r"NUL bytes \(first at character 6, line 4\)"):
        read_text_file(nul)
    good = tmp_path / "good.txt"
    good.write_text("x" * 400)
    data = recipe_from_dict({"data": {"source": "text", "path": str(good), "seq_len": 16}}).data
    assert build_data(data, seed=0).name == f"text:{good}"


def test_a_byte_order_mark_is_no_part_of_a_data_file(tmp_path):
    """Windows editors begin a UTF-8 file with a byte-order mark: a text source trained on it as three bytes of
    text, and the JSON Lines readers refused the first row ("Unexpected UTF-8 BOM")."""
    from seqzoo.training.classification import read_labelled_jsonl
    from seqzoo.training.seq2seq import read_jsonl

    text = tmp_path / "text.txt"
    text.write_bytes(b"\xef\xbb\xbfhello")
    assert read_text_file(text) == "hello"
    # Only a leading mark is dropped (as Python's utf-8-sig does): one further on, where files were joined, is text.
    text.write_bytes(b"\xef\xbb\xbfab\xef\xbb\xbfcd")
    assert read_text_file(text) == "ab\ufeffcd"
    text.write_bytes(b"ab\xef\xbb\xbfcd")
    assert read_text_file(text) == "ab\ufeffcd"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b'\xef\xbb\xbf{"source": "a", "target": "b"}\n')
    assert read_jsonl(pairs) == [("a", "b")]
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(b'\xef\xbb\xbf{"text": "a", "label": "x"}\n')
    assert [row for row, _ in read_labelled_jsonl(rows, "sequence-classification")] == [("a", "x")]
    text.write_bytes(b"\xef\xbb\xbfab\xff")  # (offsets still count the file's bytes)
    with pytest.raises(ValueError, match=r"byte 0xff at offset 5 \(line 1\) is invalid"):
        read_text_file(text)


def test_pydoc_corpus_is_there():
    docs = pydoc_documents()
    assert len(docs) > 50 and sum(map(len, docs)) > 100_000


def test_dataset_objects():
    class Columns(dict):  # the part of datasets.Dataset the loader uses
        column_names = ["text", "id"]

    rows = Columns(text=["first doc", "second doc"], id=[1, 2])
    assert dataset_documents(rows, "text") == ["first doc", "second doc"]
    with pytest.raises(ValueError, match="no column 'body' .*columns: text, id"):
        dataset_documents(rows, "body")
    with pytest.raises(ValueError, match="column 'id' must hold strings; row 0 is int"):
        dataset_documents(Columns(text=[], id=[1]), "id")
    # A plain dict and a list of rows: the column named, not a bare KeyError / TypeError; one string is not a list
    # of one-character documents.
    with pytest.raises(ValueError, match="no column 'text' .*columns: body"):
        dataset_documents({"body": ["a"]}, "text")
    with pytest.raises(ValueError, match="cannot be indexed by the column name 'text'"):
        dataset_documents([{"text": "a"}], "text")
    with pytest.raises(ValueError, match="column 'text' must be a list of strings .*got one str"):
        dataset_documents({"text": "abc"}, "text")
    assert dataset_documents({"text": ["abc"]}, "text") == ["abc"]
    data = recipe_from_dict({"data": {"source": "pydoc", "seq_len": 4, "eval_fraction": 0.3}}).data
    stream = build_data(data, seed=0, dataset=Columns(text=["abcdefghij"] * 3, id=[0, 1, 2]))
    assert stream.name == "dataset:Columns" and len(stream.train_tokens) == 23


def test_a_jsonl_data_file_that_is_not_utf8_is_named(tmp_path):
    from seqzoo.training.classification import read_labelled_jsonl
    from seqzoo.training.seq2seq import read_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_bytes('{"source": "caf\xe9", "target": "x"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"data file '.*rows.jsonl' is not UTF-8 text"):
        read_jsonl(path)
    with pytest.raises(ValueError, match=r"data file '.*rows.jsonl' is not UTF-8 text"):
        read_labelled_jsonl(path, "sequence-classification")


@pytest.mark.parametrize("case", ["text column without a dataset", "dataset to a task recipe"])
def test_data_the_run_would_not_read_is_refused_before_the_output_folder_is_touched(tmp_path, case):
    from seqzoo.training.trainer import train

    (tmp_path / "kept.txt").write_text("an earlier run's file")
    if case == "text column without a dataset":
        recipe = recipe_from_dict({"output_dir": str(tmp_path), "data": {"source": "pydoc", "text_column": "story"}})
        dataset, message = None, r"data.text_column='story' names a dataset's column, but data.source='pydoc'"
    else:
        recipe = recipe_from_dict({"output_dir": str(tmp_path), "model": {"preset": "lstm-tiny"},
                                   "task": "sequence-classification",
                                   "data": {"source": "task", "task": "first_letter"}})
        dataset, message = {"text": ["a"]}, r"train\(dataset=...\) passes text to a language model"
    with pytest.raises(ValueError, match=message):
        train(recipe, dataset=dataset, force=True, progress=False)
    assert (tmp_path / "kept.txt").read_text() == "an earlier run's file"
    if case == "text column without a dataset":  # the same column with a dataset given is what it names
        stream_recipe = recipe_from_dict({"data": {"source": "pydoc", "text_column": "story"}})
        from seqzoo.training.trainer import _check_data_given

        _check_data_given(stream_recipe, {"story": ["x"]})
        _check_data_given(recipe_from_dict({"data": {"source": "pydoc"}}), None)


def test_build_data_draws_the_tuning_set_a_recipe_asks_for():
    from seqzoo.training.recipe_loading import load_recipe

    for name in ("gru-recall", "lstm-pydoc"):  # a generated task, a corpus
        assert build_data(load_recipe(name, {"data.tuning_set": True}).data, seed=0).tuning_set is True
        assert build_data(load_recipe(name).data, seed=0).tuning_set is False


def test_a_file_listed_twice_in_data_path_is_refused(tmp_path):
    """Listed twice, a file was read twice: trained on twice, and where the second copy fell in the held-out tail,
    evaluated on text the model had trained on."""
    story = tmp_path / "story.txt"
    story.write_text("once upon a time " * 20)
    for twice in ([str(story), str(story)], [str(story), str(tmp_path / "." / "story.txt")]):
        data = recipe_from_dict({"data": {"source": "text", "path": twice, "seq_len": 8}}).data
        with pytest.raises(ValueError, match=r"data.path lists the file .*story.txt' twice"):
            build_data(data, seed=0)
    other = tmp_path / "other.txt"
    other.write_text("the end " * 20)
    data = recipe_from_dict({"data": {"source": "text", "path": [str(story), str(other)], "seq_len": 8}}).data
    assert build_data(data, seed=0).describe()["train_tokens"] + build_data(data, seed=0).describe()[
        "eval_tokens"] == 17 * 20 + 8 * 20 + 2


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b" \r\n\n\t\n"], ids=["empty", "mark-only", "whitespace"])
def test_a_text_file_without_text_is_refused_naming_it(tmp_path, content):
    """Listed beside other files, it was trained on as a document of its EOS alone, without a word (a truncated
    copy, another file than meant)."""
    story = tmp_path / "story.txt"
    story.write_text("once upon a time " * 20)
    (tmp_path / "blank.txt").write_bytes(content)
    data = recipe_from_dict({"data": {"source": "text", "path": [str(story), str(tmp_path / "blank.txt")],
                                      "seq_len": 8}}).data
    with pytest.raises(ValueError, match=r"data file '.*blank\.txt' holds no text \(it is empty, or only whitespace\)"):
        build_data(data, seed=0)


def test_data_path_lists_are_checked_when_the_recipe_is_read():
    # An empty list read no file ("the corpus has no documents"); a list given to a dataset source, which reads one
    # folder, stopped with a bare TypeError from pathlib.
    with pytest.raises(ValueError, match=r"data.path=\[\] is invalid: expected a path or a non-empty list"):
        recipe_from_dict({"data": {"source": "text", "path": []}})
    with pytest.raises(ValueError, match=r"data.path=\['a', 'b'\] is invalid: expected one folder written by "):
        recipe_from_dict({"data": {"source": "dataset", "path": ["a", "b"]}})


def test_an_empty_dataset_is_named():
    data = recipe_from_dict({"data": {"source": "pydoc", "seq_len": 4}}).data
    with pytest.raises(ValueError, match=r"the dataset \(dataset:dict\) has no rows: its column 'text'"):
        build_data(data, seed=0, dataset={"text": []})


@pytest.mark.parametrize("source", ["text", "dataset", "task"])
def test_a_dataset_given_to_a_recipe_with_data_of_its_own_is_refused(tmp_path, source):
    """train(dataset=...) replaced the recipe's data silently: a recipe's text file, dataset folder or generated
    task was not read, and the run trained on something else than the recipe said."""
    from seqzoo.training.trainer import train

    data = {"text": {"source": "text", "path": "corpus.txt"}, "dataset": {"source": "dataset", "path": "folder"},
            "task": {"source": "task", "task": "copy"}}[source]
    recipe = recipe_from_dict({"output_dir": str(tmp_path / "out"), "data": data})
    with pytest.raises(ValueError, match=rf"train\(dataset=...\) replaces the recipe's data, but "
                                         rf"data.source='{source}' names data of its own"):
        train(recipe, dataset={"text": ["abc"] * 100}, force=True, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_jsonl_file_listed_twice_is_refused_too(tmp_path):
    from seqzoo.training.classification import build_label_data
    from seqzoo.training.seq2seq import build_seq2seq_data

    pairs, rows = tmp_path / "pairs.jsonl", tmp_path / "rows.jsonl"
    pairs.write_text('{"source": "a", "target": "b"}\n' * 30)
    rows.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n' * 15)
    for task, path in (("seq2seq", pairs), ("sequence-classification", rows)):
        preset = "seq2seq-bahdanau-tiny" if task == "seq2seq" else "lstm-tiny"
        data = recipe_from_dict({"task": task, "model": {"preset": preset},
                                 "data": {"source": "jsonl", "path": [str(path), str(path)]}}).data
        with pytest.raises(ValueError, match=r"data.path lists the file .* twice"):
            build_seq2seq_data(data, seed=0) if task == "seq2seq" else build_label_data(task, data, seed=0)


def test_associative_recall_draws_keys_and_values_from_disjoint_halves_of_the_symbols():
    """MQAR (Arora et al. 2023) keeps keys and values apart: a value symbol that can also be a key makes a query
    ambiguous (is this token a key to answer, or a value?)."""
    task = MemoryTask("associative_recall", [3], symbols=10, items=5, seq_len=None, eval_samples=200, seed=0)
    inputs, targets = task.eval_sets()["distance=3"]
    pairs = inputs[:, :10].reshape(200, 5, 2)
    keys, values = pairs[..., 0], pairs[..., 1]
    assert set(keys.unique().tolist()) == set(range(FIRST_SYMBOL, FIRST_SYMBOL + 5))  # the first half, all used
    assert set(values.unique().tolist()) == set(range(FIRST_SYMBOL + 5, FIRST_SYMBOL + 10))  # the second half


def test_a_seq_len_exactly_as_long_as_the_task_needs_is_accepted():
    needed = task_length("copy", 20, 2)
    task = MemoryTask("copy", [3, 20], symbols=8, items=2, seq_len=needed, eval_samples=2, seed=0)
    assert task.train_batch(0, 4)[0].shape == (4, needed)
    with pytest.raises(ValueError, match=f"data.seq_len={needed - 1} is shorter than task 'copy' needs"):
        MemoryTask("copy", [3, 20], symbols=8, items=2, seq_len=needed - 1, eval_samples=2, seed=0)


def test_the_order_distances_are_listed_in_does_not_change_the_data():
    kwargs = dict(symbols=8, items=2, seq_len=None, eval_samples=3, seed=0)
    for mix in ("sample", "batch"):
        one, other = MemoryTask("copy", [2, 20], **kwargs, distance_mix=mix), MemoryTask("copy", [20, 2], **kwargs,
                                                                                         distance_mix=mix)
        for step in range(3):
            assert all(torch.equal(a, b) for a, b in zip(one.train_batch(step, 8), other.train_batch(step, 8)))
        assert list(one.eval_sets()) == list(other.eval_sets()) == ["distance=2", "distance=20"]


def test_a_task_uses_no_token_as_data_that_its_model_reads_as_padding():
    task = MemoryTask("copy", [2, 6], symbols=8, items=3, seq_len=None, eval_samples=8, seed=0)
    overrides = task.model_overrides()
    assert overrides["vocab_size"] == task.vocab_size
    assert overrides["bos_token_id"] is None and overrides["eos_token_id"] is None
    pad = overrides["pad_token_id"]
    assert pad is not None and 0 <= pad < task.vocab_size  # left-padded prompts need a pad id in the vocabulary
    for inputs, targets in [task.train_batch(step, 16) for step in range(4)] + list(task.eval_sets().values()):
        assert not (inputs == pad).any() and not (targets == pad).any()


def test_distance_mix_batch_with_a_fixed_seq_len_keeps_every_batch_that_long():
    task = MemoryTask("copy", [2, 20], symbols=8, items=2, seq_len=30, eval_samples=2, seed=0, distance_mix="batch")
    assert [task.train_batch(step, 4)[0].shape[1] for step in range(2)] == [30, 30]
    assert {name: inputs.shape[1] for name, (inputs, _) in task.eval_sets().items()} == {"distance=2": 30,
                                                                                        "distance=20": 30}
    inputs, _ = task.train_batch(0, 4)  # distance 2: the sample is right-aligned after blanks
    assert (inputs[:, :30 - task_length("copy", 2, 2)] == BLANK).all()


def test_each_distances_evaluation_set_draws_contents_of_its_own():
    # Drawn from one stream, every distance's evaluation set began with the same symbols.
    task = MemoryTask("copy", [2, 6], symbols=8, items=3, seq_len=None, eval_samples=16, seed=0)
    sets = task.eval_sets()
    near, far = (inputs[:, -task_length("copy", d, 3):][:, :3] for d, (inputs, _) in zip([2, 6], sets.values()))
    assert not torch.equal(near, far)


def test_no_training_step_draws_an_evaluation_set():
    # Induction's random filler makes chance repeats impossible: any shared sequence means a shared random stream.
    for mix in ("sample", "batch"):
        task = MemoryTask("induction", [3, 5], symbols=8, items=4, seq_len=None, eval_samples=8, seed=0,
                          distance_mix=mix)
        assert task.trained_share(12, 8) == {"distance=3": 0.0, "distance=5": 0.0}


def test_a_token_streams_position_counts_epochs_of_its_training_windows():
    stream = TokenStream(torch.arange(1001) % 250, "t", seq_len=10, eval_fraction=0.1, eval_samples=4, seed=0)
    windows = (900 - 1) // 10  # 900 training tokens; each window reads seq_len + 1 of them
    assert stream.position(0) == {"samples_seen": 0, "epoch": 0, "index_in_epoch": 0}
    assert stream.position(windows - 1) == {"samples_seen": windows - 1, "epoch": 0, "index_in_epoch": windows - 1}
    assert stream.position(2 * windows + 3) == {"samples_seen": 2 * windows + 3, "epoch": 2, "index_in_epoch": 3}


def test_an_evaluation_split_of_a_whole_number_of_windows_keeps_only_full_windows():
    # 50 held-out tokens hold four windows of 10 + 1 tokens, not five (the fifth would lack its last target).
    stream = TokenStream(torch.arange(500) % 250, "t", seq_len=10, eval_fraction=0.1, eval_samples=64, seed=0)
    inputs, targets = stream.eval_sets()["validation"]
    assert inputs.shape == targets.shape == (4, 10)
    assert torch.equal(targets[:, :-1], inputs[:, 1:])
    assert int(targets[-1, -1]) == 490 % 250  # the last target of the last window


def test_an_empty_corpus_is_named():
    with pytest.raises(ValueError, match="the corpus has no documents"):
        tokens_from_documents([])


def test_a_dataset_dict_trains_on_its_train_split_and_one_without_it_is_named():
    class Split(dict):
        column_names = ["text"]

    class DatasetDict(dict):  # the part of datasets.DatasetDict the loader uses
        @property
        def column_names(self):
            return {name: split.column_names for name, split in self.items()}

    splits = DatasetDict(train=Split(text=["trained on"]), test=Split(text=["held out"]))
    assert dataset_documents(splits, "text") == ["trained on"]
    with pytest.raises(ValueError, match="the DatasetDict has no 'train' split; it has validation, test"):
        dataset_documents(DatasetDict(validation=Split(text=["a"]), test=Split(text=["b"])), "text")


def test_a_file_listed_twice_under_two_spellings_is_refused(tmp_path):
    story = tmp_path / "story.txt"
    story.write_text("once upon a time " * 20)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.txt").symlink_to(story)
    for other in (tmp_path / "sub" / ".." / "story.txt", tmp_path / "link.txt"):
        data = recipe_from_dict({"data": {"source": "text", "path": [str(story), str(other)], "seq_len": 8}}).data
        with pytest.raises(ValueError, match=r"data.path lists the file .* twice"):
            build_data(data, seed=0)
    other = tmp_path / "other.txt"
    other.write_text("the end " * 20)
    data = recipe_from_dict({"data": {"source": "text", "path": [str(story), str(other)], "seq_len": 8}}).data
    assert build_data(data, seed=0).name == f"text:{story},{other}"  # (describe() names every file read)


def test_a_python_without_the_pydoc_topics_is_pointed_to_a_text_file(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pydoc_data.topics", None)  # (some distributions split it off)
    with pytest.raises(ValueError, match=r"data.source='pydoc' reads pydoc_data.topics, which this Python install "
                                         r"lacks.*use data.source='text'"):
        build_data(recipe_from_dict({}).data, seed=0)


def test_a_dataset_folder_that_is_missing_or_unreadable_without_datasets_is_named(tmp_path, monkeypatch):
    import sys

    folder = tmp_path / "saved"
    data = recipe_from_dict({"data": {"source": "dataset", "path": str(folder)}}).data
    with pytest.raises(ValueError, match=rf"data.path '{folder}' does not exist \(data.source='dataset' expects a "
                                         r"save_to_disk folder\)"):
        build_data(data, seed=0)
    folder.mkdir()
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ValueError, match=r"data.source='dataset' needs the `datasets` package"):
        build_data(data, seed=0)


@pytest.mark.parametrize("packing", [False, True])
def test_the_longest_run_of_positions_is_what_the_rows_read(packing):
    """check_fits's figure against document_position_ids over every training and evaluation window."""
    from seqzoo.tokenizer import EOS_TOKEN_ID
    from seqzoo.training.data import document_position_ids

    generator = torch.Generator().manual_seed(0)
    shorter = 0
    for trial in range(30):
        # documents of 1 to `longest` tokens, each ended by EOS, in rows of 2 to 40 tokens
        longest = int(torch.randint(2, 30, (1,), generator=generator))
        lengths = torch.randint(1, longest + 1, (60,), generator=generator).tolist()
        tokens = torch.cat([torch.cat([torch.randint(3, 250, (n - 1,), generator=generator),
                                       torch.tensor([EOS_TOKEN_ID])]) for n in lengths])
        seq_len = int(torch.randint(2, 41, (1,), generator=generator))
        stream = TokenStream(tokens, "t", seq_len=seq_len, eval_fraction=0.2, eval_samples=4, seed=0, packing=packing)
        windows = [part[i * seq_len:(i + 1) * seq_len] for part in (stream.train_tokens, stream.eval_tokens)
                   for i in range((len(part) - 1) // seq_len)]
        want = max(int(document_position_ids(w[None]).max()) + 1 if packing else len(w) for w in windows)
        assert stream.longest_run() == want, (trial, seq_len)
        shorter += want < seq_len
        with pytest.raises(ValueError, match=rf"more than the {want - 1} positions this model takes \(model.config."
                                             rf"max_position_embeddings\); set data.seq_len={want - 1} or lower"):
            stream.check_fits(want - 1)
        stream.check_fits(want)
    assert (shorter > 10) == packing  # (packed rows read fewer positions than a row holds, in most trials)


def test_a_task_longer_than_the_positions_is_refused_before_a_forced_run_deletes_the_old_one(tmp_path):
    # (the run failed at its first step, "position 127 is beyond max_position_embeddings=64", after --force had
    # deleted the finished run it replaced)
    from seqzoo.training.trainer import train

    def recipe(seq_len, **data):
        return recipe_from_dict({
            "output_dir": str(tmp_path / "run"),
            "model": {"preset": "transformer-tiny", "config": {"position_embedding": "learned",
                                                               "max_position_embeddings": 16}},
            "data": {"seq_len": seq_len, **data}, "train": {"max_steps": 1, "batch_size": 2, "eval_every": 0,
                                                           "save_every": 0}})

    train(recipe(16, source="task", task="copy", distances=[2], symbols=4, items=2), progress=False)
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    for seq_len, data, message in [
        (17, {}, r"pydoc_data.topics: a document runs on for 17 tokens in a row of data.seq_len=17, more than the 16"),
        (17, {"packing": False}, r"rows of data.seq_len=17 read one position per token \(packing: false\)"),
        (None, {"source": "task", "task": "copy", "distances": [20], "symbols": 4, "items": 2},
         r"task:copy: rows are \d+ tokens \(data.seq_len, or what data.distances need\), longer than the 16 positions"),
    ]:
        with pytest.raises(ValueError, match=message):
            train(recipe(seq_len, **data), progress=False, force=True)
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def test_eval_samples_beyond_the_held_out_rows_are_said_not_cut_silently(tmp_path, caplog):
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat. " * 200)  # 4,800 bytes: 240 held out
    for eval_samples, said in ((100_000, True), (64, False), (3, False)):  # (64: the default, left as it is)
        recipe = recipe_from_dict({"data": {"source": "text", "path": str(tmp_path / "corpus.txt"), "seq_len": 16,
                                            "eval_samples": eval_samples}})
        caplog.clear()
        with caplog.at_level("WARNING", logger="seqzoo.training"):
            stream = build_data(recipe.data, 0)
        rows = (len(stream.eval_tokens) - 1) // 16
        (inputs, _), = stream.eval_sets().values()
        assert len(inputs) == min(eval_samples, rows)
        message = (f"data.eval_samples={eval_samples} is more than the {rows} rows of data.seq_len=16 that the "
                   f"evaluated part of text:{tmp_path / 'corpus.txt'} holds: all {rows} are evaluated")
        assert (message in caplog.text) == said, caplog.text
