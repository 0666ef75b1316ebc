"""What the seqzoo commands print and write, checked against values computed here without the command: the numbers
of `seqzoo list`, the weights `seqzoo new` saves, the tokens `seqzoo generate` prints (against model.generate()),
and which flags reach what they set. The commands run in-process (main(argv))."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import seqzoo
from seqzoo.cli import main
from seqzoo.registry import get_config, preset_values


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def _table(out: str) -> dict[str, dict[str, str]]:
    """The first table of `seqzoo list` as {preset: {column: cell}} (columns are split on runs of 2+ spaces)."""
    import re

    lines = out.split("\n\n")[0].strip().splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    return {cells[0]: dict(zip(header, cells)) for cells in (re.split(r"\s{2,}", line.strip()) for line in lines[2:])}


@pytest.fixture(scope="module")
def lstm_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_outputs") / "lstm"
    assert main(["new", "lstm-tiny", str(folder), "--seed", "5", "--set", "hidden_size=24"]) == 0
    return folder


def test_list_prints_each_presets_own_sizes(capsys):
    # A column swapped (hidden with layers, the state with the KV bytes) or the parameter count computed otherwise
    # would print plausible numbers for every preset without anything failing.
    assert main(["list", "*-tiny", "--params"]) == 0
    table = _table(capsys.readouterr().out)
    for name in ("lstm-tiny", "transformer-tiny", "mamba-tiny"):
        config = get_config(name)
        with torch.device("meta"):
            model = seqzoo.create_model(name)
        row = table[name]
        assert row["architecture"] == preset_values(name)[0].name, row
        assert (int(row["hidden"]), int(row["layers"])) == (config.hidden_size, config.num_hidden_layers), row
        assert row["params"] == f"{sum(p.numel() for p in model.parameters()):,}", row
        assert row["state bytes/seq"] == f"{config.state_bytes_per_sequence():,}", row
        assert row["KV bytes/token"] == f"{config.kv_bytes_per_token():,}", row
    # (the two byte columns differ for these, so a swap shows)
    assert table["transformer-tiny"]["KV bytes/token"] != table["transformer-tiny"]["state bytes/seq"]
    assert table["lstm-tiny"]["KV bytes/token"] == "0" != table["lstm-tiny"]["state bytes/seq"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the Triton backends are available on a CUDA machine")
def test_kernels_refuses_a_forced_backend_that_cannot_run_here(capsys, monkeypatch):
    # (the table was printed with status 0, and every ssd call of the next run would raise)
    monkeypatch.setenv("SEQZOO_KERNELS", "ssd=triton")
    assert main(["kernels"]) == 2
    captured = capsys.readouterr()
    assert "requests backend 'triton' for op 'ssd', which is not available here" in captured.err
    assert "ssd" in captured.out  # the table is printed first


def test_new_saves_the_weights_of_its_seed(tmp_path, capsys):
    # --seed ignored (or a default other than the 0 its help names) would save other random weights, silently.
    for seed, flags in ((0, []), (7, ["--seed", "7"])):
        folder = tmp_path / str(seed)
        assert main(["new", "gru-tiny", str(folder), "--set", "hidden_size=16", *flags]) == 0
        torch.manual_seed(seed)
        expected = seqzoo.create_model("gru-tiny", hidden_size=16).state_dict()
        saved = AutoModelForCausalLM.from_pretrained(folder).state_dict()
        assert saved.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(saved[key], expected[key], rtol=0, atol=0, msg=key)
    capsys.readouterr()


def _generated(capsys, folder, *flags: str) -> str:
    capsys.readouterr()
    assert main(["generate", str(folder), "Hi", "--no-stream", *flags]) == 0
    return capsys.readouterr().out[:-1]  # (print's newline)


def _expected(folder, seed: int | None = None, dtype: torch.dtype = torch.float32, **kwargs) -> str:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        output = model.generate(**tokenizer("Hi", return_tensors="pt"), pad_token_id=tokenizer.pad_token_id, **kwargs)
    return tokenizer.decode(output[0], skip_special_tokens=True)


def test_generate_prints_what_model_generate_makes_with_the_same_settings(lstm_dir, capsys):
    # Each flag must reach generate(): a --top-k, --top-p, --temperature, --seed or --num-beams dropped on the way (or
    # a default changed) printed other text without a word.
    greedy = dict(do_sample=False)
    assert _generated(capsys, lstm_dir) == _expected(lstm_dir, max_new_tokens=64, **greedy)  # the default 64 tokens
    assert _generated(capsys, lstm_dir, "--max-new-tokens", "9", "--num-beams", "3") == _expected(
        lstm_dir, max_new_tokens=9, num_beams=3, **greedy)
    sampled = dict(do_sample=True, max_new_tokens=16)
    for flags, settings in (
            (["--temperature", "0.02", "--seed", "11"], dict(seed=11, temperature=0.02, top_p=1.0, top_k=0)),
            (["--temperature", "1.3"], dict(seed=0, temperature=1.3, top_p=1.0, top_k=0)),  # --seed's default: 0
            (["--temperature", "1", "--top-k", "3", "--seed", "2"], dict(seed=2, temperature=1.0, top_p=1.0, top_k=3)),
            (["--temperature", "1", "--top-p", "0.05", "--seed", "2"], dict(seed=2, temperature=1.0, top_p=0.05,
                                                                             top_k=0))):
        printed = _generated(capsys, lstm_dir, "--max-new-tokens", "16", *flags)
        assert printed == _expected(lstm_dir, **settings, **sampled), flags
    # (the sampled texts differ from one another, so a flag dropped shows)
    assert len({_generated(capsys, lstm_dir, "--max-new-tokens", "16", "--temperature", "1", "--seed", "2", *extra)
                for extra in ([], ["--top-k", "3"], ["--top-p", "0.05"])}) == 3


def test_generate_loads_the_weights_in_the_dtype_asked_for(lstm_dir, capsys, monkeypatch):
    # (--dtype ignored ran float32 weights, and the text of a half-precision run was not what that run printed)
    dtypes = []
    original = torch.nn.Module.to

    def to(self, *args, **kwargs):
        dtypes.extend({p.dtype for p in self.parameters()})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    assert _generated(capsys, lstm_dir, "--max-new-tokens", "4", "--dtype", "bfloat16")
    assert dtypes and set(dtypes) == {torch.bfloat16}, dtypes
    monkeypatch.undo()
    assert _generated(capsys, lstm_dir, "--max-new-tokens", "6", "--dtype", "bfloat16") == _expected(
        lstm_dir, dtype=torch.bfloat16, max_new_tokens=6, do_sample=False)


@pytest.mark.parametrize("flags, expected", [
    (["--temperature", "1", "--top-p", "0"], "--top-p=0.0 is invalid: must be in (0, 1]"),
    (["--temperature", "1", "--top-k", "-1"], "--top-k=-1 is invalid: must be >= 0"),
    (["--temperature", "0.5", "--num-beams", "2"], "--num-beams and --temperature together would be beam sampling"),
    (["--max-new-tokens", "-3"], "--max-new-tokens=-3 is invalid: must be >= 1"),
])
def test_generate_refuses_values_at_the_edge_of_what_is_allowed(lstm_dir, capsys, flags, expected):
    assert expected in _error(capsys, ["generate", str(lstm_dir), "Hi", *flags])


def test_generate_accepts_the_edges_of_what_is_allowed(lstm_dir, capsys):
    # --top-p 1 and --top-k 0 are the documented "off" values; --max-new-tokens 1 the fewest.
    assert _generated(capsys, lstm_dir, "--temperature", "1", "--top-p", "1", "--top-k", "0", "--max-new-tokens", "1")
    assert _generated(capsys, lstm_dir, "--temperature", "1e-6", "--max-new-tokens", "1")


def test_train_output_dir_resume_and_force_reach_the_run(tmp_path, capsys):
    # --output-dir, --resume and --force dropped on the way to train() (or --resume's bare form read as no resume)
    # trained elsewhere, started over, or refused the folder; the line printed must be the run's own figures.
    import math

    out = tmp_path / "run"
    task = ["gru-tiny", "data.source=task", "data.task=copy", "data.distances=[2]", "batch_size=4", "save_every=1",
            "--output-dir", str(out), "--no-progress"]
    assert main(["train", *task, "--print-recipe"]) == 0
    assert f"output_dir: {out}" in capsys.readouterr().out
    assert main(["train", *task, "max_steps=2"]) == 0
    line = capsys.readouterr().out.strip()
    evaluation = [json.loads(row)["eval"] for row in (out / "metrics.jsonl").read_text().splitlines()
                  if "eval" in json.loads(row)][-1]
    assert line == (f"trained gru-tiny for 2 steps (80 tokens, task causal-lm): eval loss {evaluation['loss']:.4f}, "
                    f"perplexity {math.exp(evaluation['loss']):.3f}, accuracy {evaluation['accuracy']:.3f}; saved "
                    f"to {out}"), line
    # (a fresh run would refuse the folder, which is not empty)
    assert main(["train", *task, "max_steps=2", "--resume"]) == 0  # from the newest checkpoint, which is complete
    assert "for 2 steps (80 tokens" in capsys.readouterr().out
    assert main(["train", *task, "max_steps=2", "--resume", str(out / "checkpoints" / "checkpoint-1")]) == 0
    assert "for 2 steps (80 tokens" in capsys.readouterr().out
    assert main(["train", *task, "max_steps=1", "--force"]) == 0  # starts over: the old checkpoints are gone
    assert "for 1 steps (40 tokens" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1"]
    # --resume PATH with --force: as contradictory as the bare --resume (PATH was let through, and --force ignored)
    line = _error(capsys, ["train", *task, "--resume", str(out / "checkpoints" / "checkpoint-1"), "--force"])
    assert "--resume and --force contradict each other" in line


def test_train_prints_its_line_from_the_main_process_only(tmp_path, capsys, monkeypatch):
    # Under DDP/FSDP every process returns from train(); each printing the line repeated it once per process.
    from seqzoo.training import trainer

    result = trainer.TrainResult(output_dir=tmp_path, steps=1, tokens_seen=4, eval={"loss": 1.0, "accuracy": 0.5},
                                 grad_health={}, train_tokens_per_second=1.0, is_main_process=False)
    monkeypatch.setattr(trainer, "train", lambda *args, **kwargs: result)
    assert main(["train", "gru-tiny", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    assert capsys.readouterr().out == ""
    result.is_main_process = True
    assert main(["train", "gru-tiny", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("trained gru-tiny for 1 steps (4 tokens, task causal-lm): eval loss "
                                              "1.0000, accuracy 0.500; saved to ")  # (no perplexity in the eval)


def test_train_refuses_an_empty_output_dir(capsys):
    # (`--output-dir "$RUN"` with RUN unset was dropped without a word, and the run went to the recipe's own folder)
    line = _error(capsys, ["train", "gru-tiny", "--output-dir", "", "--print-recipe"])
    assert "--output-dir is empty" in line


def test_generate_with_beams_and_streaming_on_prints_the_search_result(lstm_dir, capsys):
    # Beams do not stream: a streamer handed to beam search is refused by transformers, so --num-beams without
    # --no-stream must print the finished search, as generate() makes it.
    capsys.readouterr()
    assert main(["generate", str(lstm_dir), "Hi", "--max-new-tokens", "5", "--num-beams", "2"]) == 0
    assert capsys.readouterr().out[:-1] == _expected(lstm_dir, max_new_tokens=5, num_beams=2, do_sample=False)


def test_generate_refuses_a_cuda_index_past_the_last_device(lstm_dir, capsys, monkeypatch):
    # (cuda:1 on a one-GPU machine failed inside torch, after the model was loaded)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    line = _error(capsys, ["generate", str(lstm_dir), "Hi", "--device", "cuda:1"])
    assert "--device cuda:1: this machine has 1 CUDA device(s), numbered from 0" in line


@pytest.mark.parametrize("source", ["runs/lstm-pydocc", "~/lstm", "a/b/c"])
def test_generate_names_a_mistyped_relative_folder_instead_of_asking_the_hub(source, tmp_path, capsys, monkeypatch):
    # Each of these would be sent to the Hub as a repository id (and fail there with a network error): a first part
    # that is a folder here, a path from ~, and more than owner/name.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "lstm-pydoc").mkdir(parents=True)
    line = _error(capsys, ["generate", source, "Hi"])
    assert f"no folder {source!r} here." in line and "(A Hub model is named owner/name.)" in line, line


def test_debug_in_the_environment_shows_the_traceback(tmp_path, capsys, monkeypatch):
    # SEQZOO_DEBUG takes 1/true (and 0/false); "true" was read as false, and the one error line hid the traceback.
    for value in ("1", "true", "TRUE"):
        monkeypatch.setenv("SEQZOO_DEBUG", value)
        with pytest.raises(ValueError, match="is a file"):
            (tmp_path / "f").write_text("")
            main(["new", "gru-tiny", str(tmp_path / "f")])
    monkeypatch.setenv("SEQZOO_DEBUG", "false")
    assert "is a file" in _error(capsys, ["new", "gru-tiny", str(tmp_path / "f")])
    monkeypatch.setenv("SEQZOO_DEBUG", "yes")
    assert main(["list"]) == 2 and "SEQZOO_DEBUG='yes' is invalid" in capsys.readouterr().err


def test_describe_error_keeps_short_messages_whole_and_long_ones_to_their_first_line():
    from seqzoo.cli import describe_error

    assert describe_error(ValueError("first\nsecond")) == "first second"
    long = "a" * 300 + "\n" + "b" * 200
    assert describe_error(ValueError(long)) == "a" * 300
    assert describe_error(KeyError()) == "KeyError"
    assert describe_error(FileNotFoundError(2, "No such file or directory", "/x/y")) == \
        "No such file or directory: '/x/y'"


def test_demo_prints_each_untrained_models_own_greedy_text(capsys):
    # Every architecture's model is built from the same seed (so the table does not depend on the order they are
    # built in) and its row shows the new tokens only, escaped to ASCII: an untrained model's bytes shown as they
    # were could not be printed on Windows' redirected output (cp1252), which stopped the demo at its first row.
    from seqzoo.registry import smallest_preset
    from seqzoo.tokenizer import byte_tokenizer

    assert main(["demo", "--seed", "4", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "decode ms/token: the time of tokens 2..4," in out
    tokenizer = byte_tokenizer()
    inputs = tokenizer("How does a network remember? ", return_tensors="pt")
    for arch in ("gru", "transformer"):
        preset = smallest_preset(arch)
        torch.manual_seed(4)
        model = seqzoo.create_model(preset).eval()
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        row = next(line for line in out.splitlines() if line.startswith(preset + " "))
        assert row.endswith(ascii(text[:40])), (row, text)
    assert out.isascii()


def test_an_empty_attention_plot_path_is_refused_not_ignored(tmp_path, capsys):
    # `--attention-plot "$PLOT"` with PLOT unset decoded and wrote no plot without a word (an empty value read as
    # no option), on a causal LM too, which has no attention map.
    folder = tmp_path / "s2s"
    assert main(["new", "seq2seq-sutskever-tiny", str(folder)]) == 0
    capsys.readouterr()
    line = _error(capsys, ["generate", str(folder), "abc", "--max-new-tokens", "3", "--attention-plot", ""])
    assert line == ("error: --attention-plot: cannot write a plot to '': the path is empty; name the image file, "
                    "e.g. 'attention.png'")
    assert main(["new", "rnn-tiny", str(tmp_path / "lm")]) == 0
    capsys.readouterr()
    line = _error(capsys, ["generate", str(tmp_path / "lm"), "abc", "--max-new-tokens", "3", "--attention-plot", ""])
    assert "need an encoder-decoder (seq2seq) model" in line


def test_target_and_attention_plot_on_a_seq2seq_with_few_positions(tmp_path, capsys):
    # --target is read, not generated: the default --max-new-tokens (64) must not be held against the 16 positions
    # (the run was refused); and --attention-plot must write the file it names ("wrote ..." was all it did).
    folder = tmp_path / "s2s"
    assert main(["new", "seq2seq-transformer-tiny", str(folder), "--set", "max_position_embeddings=16"]) == 0
    plot = tmp_path / "map.png"
    capsys.readouterr()
    assert main(["generate", str(folder), "abc", "--target", "wxyz", "--attention-plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("source: abc\ntarget: wxyz\n") and out.rstrip().endswith(f"wrote {plot}")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The decoder reads its start token and the new tokens but the last: 16 of them fit, whatever the prompt's length.
    assert main(["generate", str(folder), "abcdef", "--max-new-tokens", "16", "--no-stream"]) == 0
    line = _error(capsys, ["generate", str(folder), "abcdef", "--max-new-tokens", "17"])
    assert line.endswith("room for at most 16 new tokens")
    # A --target of 15 bytes and its end token fill the 16 positions; one more failed in the model with "position
    # 16 is beyond max_position_embeddings=16", which named neither --target nor the folder.
    assert main(["generate", str(folder), "abc", "--target", "a" * 15]) == 0
    capsys.readouterr()
    line = _error(capsys, ["generate", str(folder), "abc", "--target", "a" * 16])
    assert line == (f"error: --target is 17 tokens with its end-of-sequence token, and {str(folder)!r} reads at "
                    "most 16 positions (max_position_embeddings): shorten the target")
    # The default --max-new-tokens fits the positions, said on stderr (it was refused as "too many").
    assert main(["generate", str(folder), "abc", "--no-stream"]) == 0
    assert "note: generating 16 tokens, not the default 64" in capsys.readouterr().err
    for flag in ("--weight-layout", "--head-layout"):  # (causal LMs' options, said to be so)
        line = _error(capsys, ["generate", str(folder), "abc", flag, "columns", "--max-new-tokens", "2"])
        assert f"{flag} columns lays out a causal language model's weights" in line and "encoder-decoder" in line
    # (the map is of the greedy output: a temperature was accepted and changed nothing)
    line = _error(capsys, ["generate", str(folder), "abc", "--show-attention", "--temperature", "0.5",
                           "--max-new-tokens", "4"])
    assert "--temperature cannot go with --show-attention" in line
    # A path that cannot be written is refused before the decode and the table (not after them, with a traceback).
    assert main(["generate", str(folder), "abc", "--target", "w", "--attention-plot",
                 str(tmp_path / "no" / "map.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--attention-plot: cannot write a plot to" in captured.err
    assert "does not exist" in captured.err and "Traceback" not in captured.err


def test_weight_layout_auto_keeps_rows_off_the_cpu_and_for_weights_that_are_not_plain(lstm_dir):
    # Columns were measured faster for one sequence on the CPU, in float32, with plain tensors only: a GPU run, or a
    # quantised model's weights (tensor subclasses), must keep rows.
    import argparse

    from seqzoo.generate_cli import _columns_pay

    model = AutoModelForCausalLM.from_pretrained(lstm_dir)
    args = argparse.Namespace(dtype="float32", num_beams=1)
    assert _columns_pay(model, False, "cpu", args)
    assert not _columns_pay(model, False, "cuda", args) and not _columns_pay(model, False, "cuda:0", args)
    assert not _columns_pay(model, True, "cpu", args)

    class Wrapped(torch.nn.Parameter):  # (what a quantisation library's weight subclass looks like to this check)
        pass

    model.lm_head.weight = Wrapped(model.lm_head.weight.detach().clone())
    assert not _columns_pay(model, False, "cpu", args)


def test_weight_layout_auto_keeps_rows_where_inductor_compiles_the_steps(lstm_dir):
    # Inductor's compiled step multiplies one sequence by weights stored by rows in its own loops
    # (seqzoo/kernels/one_row_products.py), measured faster than its step by columns (BENCHMARKS.md, run AJ).
    import argparse

    from seqzoo.generate_cli import _columns_pay
    from seqzoo.kernels import one_row_products

    model = AutoModelForCausalLM.from_pretrained(lstm_dir)
    assert _columns_pay(model, False, "cpu", argparse.Namespace(dtype="float32", num_beams=1, compile=None))
    assert _columns_pay(model, False, "cpu", argparse.Namespace(dtype="float32", num_beams=1, compile="eager"))
    compiled = argparse.Namespace(dtype="float32", num_beams=1, compile="inductor")
    assert _columns_pay(model, False, "cpu", compiled) is not one_row_products.AVAILABLE


def test_weight_layout_auto_keeps_rows_for_an_rwkv7_whose_step_runs_by_onednn():
    # At two threads or more, a 768-wide RWKV-7's step by rows runs its large products by oneDNN on every thread, and
    # was measured faster than by columns (BENCHMARKS.md, run AI); narrower, at one thread, or without oneDNN for one
    # row (turned off, or torch's own products chosen, as by default for one row where MKL runs on an Intel
    # processor), columns.
    import argparse

    from seqzoo.generate_cli import _columns_pay
    from seqzoo.kernels import onednn_linear, product_choice
    from tests.conftest import tiny_model

    args = argparse.Namespace(dtype="float32", num_beams=1)
    wide = tiny_model("rwkv7-tiny", hidden_size=768, num_hidden_layers=1, head_size=64, intermediate_size=64,
                      vocab_size=50)
    narrow = tiny_model("rwkv7-tiny", hidden_size=512, num_hidden_layers=1, head_size=64, intermediate_size=64,
                        vocab_size=50)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert _columns_pay(narrow, False, "cpu", args)
        assert _columns_pay(wide, False, "cpu", args) is (onednn_linear.rows_from() != 1)
        with product_choice.products("seqzoo"):
            if onednn_linear.available():
                assert not _columns_pay(wide, False, "cpu", args)
                with torch.backends.mkldnn.flags(enabled=False):
                    assert _columns_pay(wide, False, "cpu", args)
        with product_choice.products("torch"):
            assert _columns_pay(wide, False, "cpu", args)
        torch.set_num_threads(1)
        assert _columns_pay(wide, False, "cpu", args)
    finally:
        torch.set_num_threads(before)


def test_an_os_error_is_the_users_one_line_naming_the_file(capsys, monkeypatch):
    # (a missing or unreadable file is the input's fault: status 2 and its name, not "an unexpected ... report it")
    import seqzoo.cli as cli

    def fail(args):
        raise PermissionError(13, "Permission denied", "/data/run")

    monkeypatch.setattr(cli, "cmd_list", fail)
    assert main(["list"]) == 2
    assert capsys.readouterr().err == "error: Permission denied: '/data/run'\n"
