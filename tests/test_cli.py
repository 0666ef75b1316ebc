"""The seqzoo command line."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from seqzoo.cli import main


def test_list_and_kernels(capsys):
    assert main(["list", "lstm-*"]) == 0
    out = capsys.readouterr().out
    assert "lstm-tiny" in out and "gru-tiny" not in out and "state bytes/seq" in out
    assert main(["kernels"]) == 0
    out = capsys.readouterr().out
    assert "lstm" in out and "reference" in out and "torch" in out


def test_new_then_generate(tmp_path, capsys):
    folder = tmp_path / "model"
    assert main(["new", "lstm-tiny", str(folder), "--seed", "3", "--set", "hidden_size=40"]) == 0
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.hidden_size == 40
    capsys.readouterr()
    assert main(["generate", str(folder), "Hi", "--max-new-tokens", "5", "--no-stream"]) == 0
    printed = capsys.readouterr().out.strip()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    expected = model.generate(**tokenizer("Hi", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert printed == tokenizer.decode(expected[0], skip_special_tokens=True)
    # sampling with a seed is reproducible; beams run
    for extra in (["--temperature", "0.8", "--top-p", "0.9", "--seed", "1"], ["--num-beams", "3"]):
        assert main(["generate", str(folder), "Hi", "--max-new-tokens", "4", "--no-stream", *extra]) == 0
    capsys.readouterr()
    main(["generate", str(folder), "Hi", "--max-new-tokens", "4", "--no-stream", "--temperature", "0.8", "--seed", "1"])
    first = capsys.readouterr().out
    main(["generate", str(folder), "Hi", "--max-new-tokens", "4", "--no-stream", "--temperature", "0.8", "--seed", "1"])
    assert capsys.readouterr().out == first


def test_new_refuses_non_empty_folder_and_unknown_preset(tmp_path, capsys):
    (tmp_path / "x").write_text("keep me")
    try:
        main(["new", "lstm-tiny", str(tmp_path)])
    except SystemExit as exit_:
        assert "not empty" in str(exit_)
    assert (tmp_path / "x").read_text() == "keep me"
    assert main(["new", "lstm-tnyi", str(tmp_path / "new")]) == 2
    assert "Did you mean 'lstm-tiny'" in capsys.readouterr().err


def test_generate_with_forced_kernel_and_bad_source(tmp_path, capsys):
    folder = tmp_path / "m"
    main(["new", "gru-tiny", str(folder)])
    capsys.readouterr()
    assert main(["generate", str(folder), "ab", "--max-new-tokens", "3", "--no-stream", "--kernel", "gru=reference"]) == 0
    import seqzoo

    seqzoo.set_kernel_backend("gru", None)
    try:
        main(["generate", str(tmp_path / "missing"), "ab"])
        raise AssertionError("expected SystemExit")
    except SystemExit as exit_:
        assert "cannot load a model" in str(exit_)
    assert torch.get_num_threads() >= 1
