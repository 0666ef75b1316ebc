"""The seqzoo command line: the real console script in a subprocess (exit status, one-line errors, Ctrl-C, --help
without torch), and the commands in-process where only their answer matters."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from seqzoo.cli import build_parser, main
from seqzoo.registry import get_architecture
from seqzoo.utils import parse_overrides, parse_value

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "seqzoo"


def seqzoo(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script, as a user would."""
    if not SCRIPT.exists():
        pytest.skip(f"the seqzoo console script is not installed next to {sys.executable} (pip install -e .)")
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def seqzoo_together(*calls: tuple[tuple[str, ...], dict[str, str] | None], timeout: float = 120):
    """Several runs of the console script at once (each mostly waits on its own imports); their results in order."""
    if not SCRIPT.exists():
        pytest.skip(f"the seqzoo console script is not installed next to {sys.executable} (pip install -e .)")
    running = [subprocess.Popen([str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **(env or {})}) for args, env in calls]
    done = []
    try:
        for (args, _), process in zip(calls, running):
            stdout, stderr = process.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return done


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "lstm"
    assert main(["new", "lstm-tiny", str(folder), "--seed", "3", "--set", "hidden_size=40"]) == 0
    return folder


# ----------------------------------------------------------------------------------------------------------------
# The real console script.


def test_help_and_version_answer_without_torch():
    for args in (["--help"], ["--version"], ["lab", "--help"], ["train", "--help"]):
        done = subprocess.run([sys.executable, "-X", "importtime", str(SCRIPT), *args], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
        assert "torch" not in imported and "transformers" not in imported, args
    assert seqzoo("--version").stdout.strip().startswith("seqzoo ")
    top = seqzoo("--help").stdout
    assert "``" not in top and "usage: seqzoo" in top and "--debug" in top


def test_user_mistakes_are_one_line_and_debug_shows_the_traceback(model_dir, tmp_path):
    positions = tmp_path / "learned"
    assert main(["new", "transformer-tiny", str(positions), "--set", "position_embedding=learned",
                 "max_position_embeddings=16"]) == 0
    missing, forced, debug, env_debug, bad_env, long_prompt = seqzoo_together(
        (("generate", str(tmp_path / "no-such-folder"), "hi"), None),
        (("generate", str(model_dir), "hi", "--kernel", "lstm=fast", "--max-new-tokens", "2"), None),
        (("generate", str(model_dir), "hi", "--kernel", "lstm=fast", "--debug"), None),
        (("list", "mambaa"), {"SEQZOO_DEBUG": "1"}),
        (("list",), {"SEQZOO_DEBUG": "yes"}),
        (("generate", str(positions), "x" * 17, "--max-new-tokens", "1"), None),
    )
    # (transformers' tokenizer printed "Token indices sequence length is longer than ..." above the error)
    assert long_prompt.returncode == 2 and long_prompt.stdout == ""
    assert one_error_line(long_prompt.stderr).startswith("error: the prompt is 17 tokens")
    assert missing.returncode == 2
    assert "no folder" in one_error_line(missing.stderr)

    assert forced.returncode == 2
    line = one_error_line(forced.stderr)
    assert "'fast'" in line and "reference" in line  # names what was asked for and what exists

    assert debug.returncode != 0 and "Traceback" in debug.stderr and "KernelError" in debug.stderr
    assert "Traceback" in env_debug.stderr
    assert bad_env.returncode == 2 and "SEQZOO_DEBUG='yes'" in one_error_line(bad_env.stderr)


def _start(args: list[str]) -> subprocess.Popen:
    # A shell without job control starts background commands with SIGINT ignored, and a child inherits that: the
    # command under test gets Ctrl-C's default action back whatever launched the test run.
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _interrupt_when(process: subprocess.Popen, ready: callable, timeout: float = 600) -> tuple[str, str]:
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the command never got going"
            time.sleep(0.2)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        return process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # a failed test leaves no training run behind
            process.kill()
            process.communicate()


@pytest.mark.release_independent  # signal handling: the same on every transformers release
def test_ctrl_c_in_train_is_one_line_with_the_way_to_resume(tmp_path):
    out = tmp_path / "run"
    process = _start([str(SCRIPT), "train", "gru-tiny", "max_steps=100000", "--output-dir", str(out), "--no-progress"])
    _, stderr = _interrupt_when(process, lambda: (out / "metrics.jsonl").exists())
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted; run the same command with --resume")


@pytest.mark.release_independent  # signal handling: the same on every transformers release
def test_ctrl_c_in_lab_stops_every_worker_without_tracebacks(tmp_path):
    out = tmp_path / "lab"
    process = _start([str(SCRIPT), "lab", "--smoke", "--out", str(out), "--architectures", "gru"])
    _, stderr = _interrupt_when(process, lambda: any((out / "runs").glob("gru/*/metrics.jsonl")))
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("interrupted")
    assert '"status": "interrupted"' in (out / "results.json").read_text()


# ----------------------------------------------------------------------------------------------------------------
# In-process: what each command answers.


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    return one_error_line(capsys.readouterr().err)


def test_list_and_kernels(capsys, monkeypatch):
    assert main(["list", "lstm-*"]) == 0
    out = capsys.readouterr().out
    assert "lstm-tiny" in out and "gru-tiny" not in out and "state bytes/seq" in out
    assert "Did you mean 'mamba-" in _error(capsys, ["list", "mambaa"])
    assert main(["list", "*tiny"]) == 0
    heads = capsys.readouterr().out.split("heads (tasks)")[1]
    for name in ("lstm", "transformer", "seq2seq"):
        spec = get_architecture(name)
        row = next(line for line in heads.splitlines() if line.startswith(name + " "))
        bidirectional = "yes" if spec.config_class.supports_bidirectional else "no"
        assert row.split() == [name, *", ".join(spec.heads).split(), bidirectional]
    assert {name: row.split()[-1] for row in heads.splitlines()[2:] for name in row.split()[:1]} == {
        "gru": "yes", "hybrid": "no", "lstm": "yes", "mamba": "yes", "mamba2": "yes", "rnn": "yes", "rwkv7": "yes",
        "seq2seq": "yes", "transformer": "no"}
    assert main(["kernels"]) == 0
    out = capsys.readouterr().out
    assert "lstm" in out and "reference" in out and "torch" in out
    # and who multiplies a decode step's rows by a weight on this CPU (test_kernels_says_who_multiplies_...)
    assert "CPU decoding, up to 16 rows times a weight stored by rows: eagerly " in out and "; by default, " in out
    if not torch.cuda.is_available():
        assert "no [1]" in out and "[1] " in out and "CUDA" in out.split("[1] ")[-1]  # why Triton is unavailable
    # A misspelt SEQZOO_KERNELS entry makes every kernel call raise: the table selects nothing, then the error.
    monkeypatch.setenv("SEQZOO_KERNELS", "lstm=bogus")
    assert main(["kernels"]) == 2
    captured = capsys.readouterr()
    rows = [line.split() for line in captured.out.splitlines()[2:] if line.startswith(("lstm ", "gru "))]
    assert len(rows) == 4 and all(row[4] not in ("yes", "forced") for row in rows), rows
    assert "SEQZOO_KERNELS entry 'lstm=bogus': unknown kernel backend" in captured.err


def test_kernels_says_who_multiplies_a_decode_steps_rows(capsys, monkeypatch):
    # What runs (seqzoo.kernels.product_choice, as onednn_linear and one_row_products apply it), on either vendor.
    from seqzoo.kernels import one_row_products, onednn_linear, product_choice

    if not onednn_linear.available() or not one_row_products.AVAILABLE or not torch.backends.mkl.is_available():
        pytest.skip("this torch lacks oneDNN, MKL or inductor's graph passes")
    for vendor, line in (
            (True, "eagerly torch's (F.linear, MKL's) below 4 rows and oneDNN's from 4; compiled, inductor's product; "
                   "by default"),
            (False, "eagerly oneDNN's; compiled, inductor's own loops for one row; by default")):
        monkeypatch.setattr(product_choice, "_mkl_on_intel", vendor)  # (as on an Intel processor with MKL, or not)
        assert main(["kernels"]) == 0
        assert line in capsys.readouterr().out
    with product_choice.products("torch"):
        assert main(["kernels"]) == 0
    assert ("eagerly torch's (F.linear, MKL's); compiled, inductor's product; as set "
            "(seqzoo.kernels.product_choice.set_products('torch'))") in capsys.readouterr().out
    # What runs, not only what is chosen: oneDNN turned off is said so.
    with product_choice.products("seqzoo"), torch.backends.mkldnn.flags(enabled=False):
        assert main(["kernels"]) == 0
    assert ("eagerly torch's (F.linear, MKL's); compiled, inductor's own loops for one row; as set "
            "(seqzoo.kernels.product_choice.set_products('seqzoo')), on this processor (") in (
        out := capsys.readouterr().out)
    assert "; oneDNN's product is off or not in this torch;" in out


def test_kernels_names_a_forced_backend_that_runs_on_another_device(capsys, monkeypatch):
    # Under TRITON_INTERPRET=1 the Triton backends are available on a CPU machine, but their kernels take CUDA
    # tensors: `seqzoo kernels` showed a forced one as fine (status 0) and every call then raised.
    from seqzoo.kernels import registry
    from seqzoo.kernels.triton_support import triton_installed

    if torch.cuda.is_available() or not triton_installed():
        pytest.skip("needs a machine without CUDA, with Triton installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("SEQZOO_KERNELS", "wkv7=triton")
    registry.refresh()
    try:
        if not next(r for r in registry.list_kernels() if r["backend"] == "triton" and r["op"] == "wkv7")["available"]:
            pytest.skip("this Triton offers no interpreter")
        assert main(["kernels"]) == 2
        assert ("requests backend 'triton' for op 'wkv7', which runs on another device than this machine's (cpu)"
                in capsys.readouterr().err)
    finally:
        monkeypatch.undo()
        registry.refresh()


def test_new_then_generate(model_dir, capsys):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.hidden_size == 40
    capsys.readouterr()
    assert main(["generate", str(model_dir), "Hi", "--max-new-tokens", "5", "--no-stream"]) == 0
    printed = capsys.readouterr().out.strip()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    expected = model.generate(**tokenizer("Hi", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert printed == tokenizer.decode(expected[0], skip_special_tokens=True)
    for extra in (["--temperature", "0.8", "--top-p", "0.9", "--seed", "1"], ["--num-beams", "3"]):
        assert main(["generate", str(model_dir), "Hi", "--max-new-tokens", "4", "--no-stream", *extra]) == 0
    capsys.readouterr()
    sampled = ["generate", str(model_dir), "Hi", "--max-new-tokens", "4", "--no-stream", "--temperature", "0.8",
               "--seed", "1"]
    main(sampled)
    first = capsys.readouterr().out
    main(sampled)
    assert capsys.readouterr().out == first  # sampling with a seed is reproducible


def test_streamed_text_is_the_text_printed_without_streaming(tmp_path, capsys):
    # A model that ends every text at once: its state is tanh(1) everywhere, and the head scores only the EOS.
    folder = tmp_path / "rnn"
    assert main(["new", "rnn-tiny", str(folder), "--set", "tie_word_embeddings=false"]) == 0
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for layer in model.model.layers:
            for name, weight in layer.named_parameters():
                weight.fill_(1.0 if name == "bias_ih" else 0.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[model.config.eos_token_id] = 1.0
    model.save_pretrained(folder)
    printed = []
    for flags in ([], ["--no-stream"]):
        capsys.readouterr()
        assert main(["generate", str(folder), "Hi", "--max-new-tokens", "4", *flags]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] == "Hi\n"  # (the EOS generated is left out of both)


def test_generate_with_a_compiled_decode_step(model_dir, capsys, monkeypatch):
    torch._dynamo.reset()
    assert main(["generate", str(model_dir), "Hi", "--max-new-tokens", "5", "--no-stream"]) == 0
    eager = capsys.readouterr().out
    from torch._dynamo.utils import counters

    from seqzoo.models.compiled_decoding import fixed_model_options
    from seqzoo.models.modeling_utils import SeqzooForCausalLM

    compiled_with = []
    compile_decoding = SeqzooForCausalLM.compile_decoding

    def recorded(model, *args, **kwargs):
        compiled_with.append(kwargs)
        return compile_decoding(model, *args, **kwargs)

    monkeypatch.setattr(SeqzooForCausalLM, "compile_decoding", recorded)
    counters.clear()
    assert main(["generate", str(model_dir), "Hi", "--max-new-tokens", "5", "--no-stream", "--compile", "eager"]) == 0
    assert capsys.readouterr().out == eager
    assert counters["stats"]["unique_graphs"] >= 1  # the steps did run compiled
    # (without dynamo's guards on the model, which the command changes no more once it decodes)
    assert compiled_with == [{"backend": "eager", **fixed_model_options()}]
    torch._dynamo.reset()
    error = _error(capsys, ["generate", str(model_dir), "Hi", "--compile", "inductr"])
    assert "is not a torch.compile backend here; choose from" in error and "inductor" in error
    # (only backends usable here: tvm and openxla need packages this machine lacks, CUDA graphs a GPU)
    from seqzoo.models.compiled_decoding import backend_installed
    suggested = error.split("choose from ")[1].split(" (default")[0].split(", ")
    assert all(backend_installed(name) for name in suggested)
    assert ("cudagraphs" in suggested) == torch.cuda.is_available()
    if not backend_installed("tvm"):
        assert "tvm" not in suggested


def test_generate_decodes_with_the_model_held_fixed(model_dir, capsys, monkeypatch):
    # (its planned steps check the model at their first step only: model.fixed_while_decoding())
    from seqzoo.models import decode_plan
    from seqzoo.models.modeling_utils import SeqzooForCausalLM

    held, generate = [], SeqzooForCausalLM.generate

    def recorded(model, *args, **kwargs):
        fixed = decode_plan._FIXED.get()
        held.append(fixed is not None and fixed.model is model)
        return generate(model, *args, **kwargs)

    monkeypatch.setattr(SeqzooForCausalLM, "generate", recorded)
    for flags in ([], ["--num-beams", "2", "--no-stream"]):
        assert main(["generate", str(model_dir), "Hi", "--max-new-tokens", "3", *flags]) == 0
    assert held == [True, True]
    after = decode_plan._FIXED.get()
    assert after is None or after.model is None  # (and not after it)


def test_generate_with_the_head_by_columns(model_dir, capsys, monkeypatch):
    assert main(["generate", str(model_dir), "Hi", "--max-new-tokens", "5", "--no-stream", "--weight-layout",
                 "rows"]) == 0
    rows = capsys.readouterr().out
    from seqzoo.models.modeling_utils import SeqzooForCausalLM

    layouts = []
    original = SeqzooForCausalLM.set_head_layout
    monkeypatch.setattr(SeqzooForCausalLM, "set_head_layout",
                        lambda self, layout: (layouts.append(layout), original(self, layout))[1])
    assert main(["generate", str(model_dir), "Hi", "--max-new-tokens", "5", "--no-stream",
                 "--head-layout", "columns"]) == 0
    assert layouts == ["columns"] and capsys.readouterr().out == rows
    with pytest.raises(SystemExit):
        main(["generate", str(model_dir), "Hi", "--head-layout", "cols"])
    assert "--head-layout: invalid choice: 'cols' (choose from 'rows', 'columns')" in capsys.readouterr().err
    # Every matrix by columns, then the head alone by rows again (in that order), with the same tokens.
    original_weights = SeqzooForCausalLM.set_weight_layout
    monkeypatch.setattr(SeqzooForCausalLM, "set_weight_layout",
                        lambda self, layout: (layouts.append(("all", layout)), original_weights(self, layout))[1])
    layouts.clear()
    assert main(["generate", str(model_dir), "Hi", "--max-new-tokens", "5", "--no-stream",
                 "--weight-layout", "columns"]) == 0
    assert layouts == [("all", "columns")] and capsys.readouterr().out == rows
    layouts.clear()
    assert main(["generate", str(model_dir), "Hi", "--max-new-tokens", "5", "--no-stream",
                 "--head-layout", "rows", "--weight-layout", "columns"]) == 0
    assert layouts == [("all", "columns"), "rows"] and capsys.readouterr().out == rows
    with pytest.raises(SystemExit):
        main(["generate", str(model_dir), "Hi", "--weight-layout", "column"])
    assert "--weight-layout: invalid choice: 'column' (choose from 'auto', 'rows', 'columns')" in \
        capsys.readouterr().err


def test_generate_lays_out_by_columns_where_that_is_faster(model_dir, capsys, monkeypatch):
    # --weight-layout auto (the default): by columns for one sequence on the CPU in float32, by rows otherwise.
    from seqzoo.models.modeling_utils import SeqzooForCausalLM

    layouts = []
    original = SeqzooForCausalLM.set_weight_layout
    monkeypatch.setattr(SeqzooForCausalLM, "set_weight_layout",
                        lambda self, layout: (layouts.append(layout), original(self, layout))[1])
    base = ["generate", str(model_dir), "Hi", "--max-new-tokens", "3", "--no-stream"]
    for flags, expected in (([], ["columns"]), (["--num-beams", "2"], []), (["--dtype", "bfloat16"], []),
                            (["--weight-layout", "rows"], []), (["--weight-layout", "auto", "--temperature", "0.5"],
                                                                 ["columns"])):
        layouts.clear()
        assert main([*base, *flags]) == 0, flags
        assert layouts == expected, flags
    capsys.readouterr()


def test_seqzoo_decoding_flags_on_another_library_model_are_refused(model_dir, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert main(["generate", str(tmp_path), "Hi", "--max-new-tokens", "2", "--no-stream"]) == 0
    capsys.readouterr()
    for flags in (["--compile", "eager"], ["--weight-layout", "columns"], ["--head-layout", "columns"]):
        assert (f"{flags[0]} needs a seqzoo causal language model; {str(tmp_path)!r} holds a GPT2LMHeadModel"
                in _error(capsys, ["generate", str(tmp_path), "Hi", *flags]))


@pytest.mark.parametrize("flags, expected", [
    (["--num-beams", "0"], "--num-beams=0 is invalid: must be >= 1"),
    (["--temperature", "-1"], "--temperature=-1.0 is invalid: must be a finite number >= 0"),
    (["--temperature", "inf"], "--temperature=inf is invalid: must be a finite number >= 0"),
    # (a temperature this small overflowed the scores divided by it: "probability tensor contains inf, nan")
    (["--temperature", "1e-300"], "--temperature=1e-300 is too small to sample with (the scores divided by it "
                                  "overflow): use 0 for greedy decoding, which it amounts to, or >= 1e-06"),
    (["--temperature", "0.8", "--top-p", "1.5"], "--top-p=1.5 is invalid: must be in (0, 1]"),
    (["--top-p", "0.9"], "--top-p only applies when sampling; add --temperature"),
    (["--top-k", "5"], "--top-k only applies when sampling"),
    # (a seed with greedy decoding or beam search was accepted and changed nothing)
    (["--seed", "3"], "--seed only applies when sampling; add --temperature"),
    (["--num-beams", "2", "--seed", "3"], "--seed only applies when sampling"),
    (["--top-k", "5", "--seed", "3"], "--top-k and --seed only apply when sampling"),
    (["--max-new-tokens", "0"], "--max-new-tokens=0 is invalid"),
    (["--kernel", "lstm"], "--kernel 'lstm' is not of the form key=value"),
    # (a value read as JSON was named as Python writes it: 'None')
    (["--kernel", "lstm=null"], "unknown kernel backend for op 'lstm': 'null'; valid: reference, torch"),
])
def test_generate_refuses_nonsense(model_dir, capsys, flags, expected):
    assert expected in _error(capsys, ["generate", str(model_dir), "Hi", *flags])


def test_generate_names_missing_folders_and_devices(model_dir, tmp_path, capsys, monkeypatch):
    assert "no folder 'no-such-folder' here" in _error(capsys, ["generate", "no-such-folder", "hi"])
    (tmp_path / "runs" / "lstm-pydoc").mkdir(parents=True)
    line = _error(capsys, ["generate", str(tmp_path / "runs" / "lstm-pydocc"), "hi"])
    assert "Did you mean" in line and "lstm-pydoc'" in line
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "torch sees no CUDA GPU" in _error(capsys, ["generate", str(model_dir), "hi", "--device", "cuda"])
    assert "not a device name" in _error(capsys, ["generate", str(model_dir), "hi", "--device", "gpu"])
    # Device types torch names but cannot generate on here failed inside torch ("Tensor.item() cannot be called on
    # meta tensors", "PyTorch is not linked with support for xla devices").
    for device in ("meta", "xla"):
        assert f"--device {device}: seqzoo generate runs on cpu, cuda, cuda:N or mps, not on a {device} device" in \
            _error(capsys, ["generate", str(model_dir), "hi", "--device", device])


def test_generate_names_a_prompt_that_is_not_utf8_and_a_seed_out_of_range(model_dir, capsys):
    # A byte that is not UTF-8 on the command line reaches Python as a surrogate escape, which tokenizers refuses
    # with a message about TextEncodeInput; torch.manual_seed refuses a seed past 64 bits with "Overflow ...".
    prompt = b"ab\xffc".decode("utf-8", "surrogateescape")
    with pytest.raises(SystemExit):
        main(["generate", str(model_dir), prompt])
    assert "the argument 'ab\\xffc' is not valid UTF-8 text" in capsys.readouterr().err
    for command in (["generate", str(model_dir), "Hi"], ["new", "lstm-tiny", str(model_dir / "other")]):
        with pytest.raises(SystemExit):
            main([*command, "--seed", str(2**64)])
        assert "argument --seed: 18446744073709551616 is out of range" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["new", "gru-tiny", "NEW", "--set"], ["generate", "NEW", "ab", "--kernel"],
                                  ["convert", "word-lm", "x.pt", "NEW", "--set"],
                                  ["convert", "word-lm", "x.pt", "NEW", "--key-map"]])
def test_an_option_of_pairs_given_no_pair_is_refused(tmp_path, capsys, argv):
    # --set and --kernel took no values at all, and did nothing without a word.
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "m") if a == "NEW" else a for a in argv])
    assert info.value.code == 2 and "expected at least one argument" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_new_refuses_non_empty_folder_and_unknown_preset(tmp_path, capsys):
    (tmp_path / "x").write_text("keep me")
    assert "not empty (pass --force" in _error(capsys, ["new", "lstm-tiny", str(tmp_path)])
    assert (tmp_path / "x").read_text() == "keep me"
    assert "Did you mean 'lstm-tiny'" in _error(capsys, ["new", "lstm-tnyi", str(tmp_path / "new")])
    assert "is a file" in _error(capsys, ["new", "lstm-tiny", str(tmp_path / "x")])


@pytest.mark.parametrize("argv", [["new", "rnn-tiny", "", "--force"], ["new", "rnn-tiny", " "],
                                  ["publish", "MODEL", "me/m", "--dry-run", "--output", ""]])
def test_an_empty_folder_name_is_refused_not_read_as_the_current_folder(tmp_path, capsys, monkeypatch, argv):
    # Path("") is ".": `seqzoo new rnn-tiny "$DIR" --force` with DIR unset replaced the model in the current folder
    # (and `publish --output ""` built there), where `seqzoo convert` / `export` refused the empty destination.
    model = tmp_path / "model"
    assert main(["new", "lstm-tiny", str(model)]) == 0
    capsys.readouterr()
    before = {path.name: path.read_bytes() for path in model.iterdir()}
    monkeypatch.chdir(model)
    line = _error(capsys, [str(model) if a == "MODEL" else a for a in argv])
    assert line.endswith("is an empty name; pass the folder to write to (new or empty)"), line
    assert {path.name: path.read_bytes() for path in model.iterdir()} == before


def test_new_refuses_a_vocabulary_smaller_than_the_byte_tokenizers_and_leaves_nothing(tmp_path, capsys):
    line = _error(capsys, ["new", "gru-tiny", str(tmp_path / "m"), "--set", "vocab_size=200", "pad_token_id=null",
                           "eos_token_id=null", "bos_token_id=null"])
    assert line == "error: the byte tokenizer needs vocab_size >= 258; this model has vocab_size=200"
    assert os.listdir(tmp_path) == []


def test_new_force_drops_the_training_record_of_the_model_it_replaces(tmp_path, capsys):
    # Left behind, it would make the model card of the untrained model show another model's training figures.
    (tmp_path / "seqzoo_training.json").write_text(json.dumps({"dataset": "text:corpus.txt", "steps": 4}))
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "vocab.txt").write_text("w0\nw1\n")  # (a word list for convert word-lm --vocab, no tokenizer's)
    # the earlier model's weights under a variant: from_pretrained(variant="fp16") would read them beside the new
    # config (a file named like one but not a variant's stays)
    (tmp_path / "model.fp16.safetensors").write_bytes(b"x")
    (tmp_path / "model.fp16.safetensors.bak").write_bytes(b"x")
    assert main(["new", "rnn-tiny", str(tmp_path), "--force"]) == 0
    assert ("removed 2 file(s) of the model it replaced that this one does not write: model.fp16.safetensors, "
            "seqzoo_training.json") in capsys.readouterr().out
    assert not (tmp_path / "seqzoo_training.json").exists() and (tmp_path / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "vocab.txt").read_text() == "w0\nw1\n"
    assert not (tmp_path / "model.fp16.safetensors").exists() and (tmp_path / "model.fp16.safetensors.bak").exists()


def test_generate_with_forced_kernel_and_bad_source(tmp_path, capsys):
    import seqzoo

    folder = tmp_path / "m"
    main(["new", "gru-tiny", str(folder)])
    capsys.readouterr()
    try:
        assert main(["generate", str(folder), "ab", "--max-new-tokens", "3", "--no-stream", "--kernel",
                     "gru=reference"]) == 0
        assert "no effect" not in capsys.readouterr().err
        # An op this model never calls: said, not left silently without effect (the same in a second run).
        for _ in range(2):
            assert main(["generate", str(folder), "ab", "--max-new-tokens", "3", "--no-stream", "--kernel",
                         "gru=reference", "wkv7=reference"]) == 0
            err = capsys.readouterr().err
            assert "note: --kernel wkv7=reference had no effect: this model ran no wkv7 kernel" in err
            assert "gru=reference" not in err
    finally:
        seqzoo.set_kernel_backend("gru", None)
        seqzoo.set_kernel_backend("wkv7", None)
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    assert "holds no config.json" in _error(capsys, ["generate", str(tmp_path / "empty"), "ab"])
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert "cannot load a model and tokenizer from the folder" in _error(capsys, ["generate", str(tmp_path / "empty"),
                                                                                "ab"])


def test_generate_refuses_a_classifier_folder(tmp_path, capsys):
    """AutoModelForCausalLM loads a token classifier's folder too (the lm_head tied to the embeddings, or new), and
    the command printed what that untrained head made up."""
    import seqzoo

    model = seqzoo.create_model("mamba-tiny", "token-classification", num_labels=2)
    model.save_pretrained(tmp_path / "tagger")
    seqzoo.byte_tokenizer().save_pretrained(tmp_path / "tagger")
    capsys.readouterr()
    line = _error(capsys, ["generate", str(tmp_path / "tagger"), "ab", "--max-new-tokens", "3", "--no-stream"])
    assert "holds a MambaForTokenClassification (the token-classification head)" in line


def test_generate_and_export_refuse_a_backbone_without_its_head(tmp_path, capsys):
    """A backbone folder (AutoModel, model.model.save_pretrained) loads into the causal LM with its head initialised
    anew; transformers' report of that was silenced, and the untrained head generated (or was exported)."""
    import seqzoo

    seqzoo.create_model("transformer-tiny", tie_word_embeddings=False).model.save_pretrained(tmp_path / "backbone")
    seqzoo.byte_tokenizer().save_pretrained(tmp_path / "backbone")
    capsys.readouterr()
    line = _error(capsys, ["generate", str(tmp_path / "backbone"), "ab", "--max-new-tokens", "3", "--no-stream"])
    assert "lacks weights of TransformerForCausalLM (lm_head.weight)" in line
    line = _error(capsys, ["export", "--to", "llama", str(tmp_path / "backbone"), str(tmp_path / "out")])
    assert "lacks weights of TransformerForCausalLM (lm_head.weight)" in line
    seqzoo.create_model("transformer-tiny", "sequence-classification", num_labels=2).save_pretrained(tmp_path / "cls")
    capsys.readouterr()
    line = _error(capsys, ["export", "--to", "llama", str(tmp_path / "cls"), str(tmp_path / "out")])
    assert "holds a TransformerForSequenceClassification (the sequence-classification head)" in line
    assert not (tmp_path / "out").exists()


def test_generate_names_a_model_type_nobody_registers_and_never_prompts(model_dir, tmp_path, capsys, monkeypatch):
    # (transformers asked "Do you wish to run the custom code? [y/N]" on the terminal, for code the folder lacks.)
    import shutil

    shutil.copytree(model_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model_type"] = "seqzoo_pluginarch"
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail("prompted"))
    line = _error(capsys, ["generate", str(tmp_path / "m"), "ab"])
    assert "model_type 'seqzoo_pluginarch', which neither seqzoo nor transformers registers here" in line
    del config["model_type"]  # (transformers said the folder "contains custom code which must be executed")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    line = _error(capsys, ["generate", str(tmp_path / "m"), "ab"])
    assert "config.json' has no model_type field, which names the model's architecture (seqzoo's: " in line
    assert "custom code" not in line


def test_generate_names_a_misspelt_seqzoo_kernels_entry_before_printing_anything(model_dir, capsys, monkeypatch):
    # (the prompt was echoed first, so a terminal showed "aberror: SEQZOO_KERNELS entry ...")
    monkeypatch.setenv("SEQZOO_KERNELS", "lstm=referense")
    assert main(["generate", str(model_dir), "ab", "--max-new-tokens", "2"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: SEQZOO_KERNELS entry 'lstm=referense': unknown kernel backend")


def test_seqzoo_products_in_the_environment_is_read_and_a_bad_value_named_before_anything(model_dir, capsys,
                                                                                       monkeypatch):
    from seqzoo.kernels import product_choice

    def environment(value):
        monkeypatch.setenv("SEQZOO_PRODUCTS", value)
        monkeypatch.setattr(product_choice, "_env", None)  # (read once per process: read again)

    try:
        environment("mkl")
        assert main(["generate", str(model_dir), "ab", "--max-new-tokens", "2"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error: the environment variable SEQZOO_PRODUCTS='mkl' is not a choice of "
                                            "who multiplies a decode step's rows; choose one of 'auto', 'torch'")
        assert main(["kernels"]) == 2
        out, err = capsys.readouterr()
        assert "SEQZOO_PRODUCTS='mkl' is not a choice" in err and "lstm" in out and "CPU decoding" not in out
        environment("torch")
        assert main(["kernels"]) == 0
        out = capsys.readouterr().out
        assert "eagerly torch's (F.linear" in out and "as set (SEQZOO_PRODUCTS=torch)" in out
        assert main(["generate", str(model_dir), "ab", "--max-new-tokens", "2"]) == 0
        # A misspelt name is one seqzoo does not read: said so, with the name meant.
        monkeypatch.setenv("SEQZOO_PRODUCT", "torch")
        assert main(["list"]) == 0
        assert "SEQZOO_PRODUCT is not one seqzoo reads (did you mean SEQZOO_PRODUCTS?)" in capsys.readouterr().err
    finally:
        monkeypatch.undo()
        product_choice._env = None


def test_generate_refuses_more_positions_than_the_model_has(tmp_path, capsys):
    # (The model stopped part way, its text printed, with an error naming a position but not the flag.)
    folder = tmp_path / "learned"
    main(["new", "transformer-tiny", str(folder), "--set", "position_embedding=learned", "max_position_embeddings=16"])
    capsys.readouterr()
    assert main(["generate", str(folder), "0123456789", "--max-new-tokens", "7", "--no-stream"]) == 0
    capsys.readouterr()
    assert ("--max-new-tokens=8 is too many: " + repr(str(folder)) + " reads at most 16 positions "
            "(max_position_embeddings), which leaves room for at most 7 new tokens after this 10-token prompt"
            in _error(capsys, ["generate", str(folder), "0123456789", "--max-new-tokens", "8"]))
    assert "the prompt is 17 tokens" in _error(capsys, ["generate", str(folder), "x" * 17, "--max-new-tokens", "1"])
    # The default (64) was refused as "--max-new-tokens=64 is too many" though no one gave it: it fits the model now,
    # said on stderr, and generates what model.generate() does with that many.
    assert main(["generate", str(folder), "0123456789", "--no-stream"]) == 0
    out, err = capsys.readouterr()
    assert "note: generating 7 tokens, not the default 64: " + repr(str(folder)) + " reads at most 16 positions" in err
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("0123456789", return_tensors="pt")
    expected = tokenizer.decode(model.generate(**ids, max_new_tokens=7, do_sample=False)[0, ids["input_ids"].shape[1]:])
    assert expected in out and len(expected) > 0


def test_train_resume_and_force_together_are_refused_and_resume_leaves_an_override_alone(tmp_path, capsys):
    line = _error(capsys, ["train", "gru-tiny", "--output-dir", str(tmp_path), "--resume", "--force"])
    assert "--resume and --force contradict each other" in line
    # --resume takes an optional PATH: an override after it was taken for one ("'max_steps=3' does not exist").
    assert main(["train", "gru-tiny", "--output-dir", str(tmp_path), "--resume", "max_steps=3", "--print-recipe"]) == 0
    assert "max_steps: 3" in capsys.readouterr().out


def test_generate_names_a_wrongly_typed_config_field(tmp_path, capsys):
    from transformers import MambaConfig

    MambaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2).save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["hidden_size"] = "32"  # transformers' own config classes check field types
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    line = _error(capsys, ["generate", str(tmp_path / "m"), "ab"])
    assert "'hidden_size'" in line


def test_demo_times_decoding_only(capsys):
    assert main(["demo", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "decode ms/token" in out and "after the prompt and the first token" in out
    assert "error: --max-new-tokens=1" in _error(capsys, ["demo", "--max-new-tokens", "1"])


def test_every_option_has_help_and_no_description_prints_markup():
    def walk(parser: argparse.ArgumentParser, name: str):
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child_name, child in action.choices.items():
                    yield from walk(child, f"{name} {child_name}")

    for name, parser in walk(build_parser(), "seqzoo"):
        assert "``" not in (parser.description or ""), name
        for action in parser._actions:
            if action.option_strings and action.help is None:
                raise AssertionError(f"`{name}` option {action.option_strings} has no help text")
            # (an option that has a value unless given says which: `seqzoo demo --prompt` did not)
            if action.default not in (None, False, [], argparse.SUPPRESS) and action.help != argparse.SUPPRESS:
                assert "default" in action.help and str(action.default).strip() in action.help, (name, action.help)
    lab_usage = build_parser()._subparsers._group_actions[0].choices["lab"].format_usage()
    assert "[gradients | seq2seq | bidirectional | sweep]" in lab_usage and "{gradients" not in lab_usage


def test_one_override_parser():
    assert parse_overrides(["hidden_size=64", "lr=1e-3", "dropout=.1", "variant=gpt2", "tie=true", "x=null",
                            "distances=[8, 32]", "layers=[mamba, attention]", "mixed_precision=no", "name="]) == {
        "hidden_size": 64, "lr": 1e-3, "dropout": 0.1, "variant": "gpt2", "tie": True, "x": None,
        "distances": [8, 32], "layers": ["mamba", "attention"], "mixed_precision": "no", "name": ""}
    assert parse_value("True") is True and parse_value('"7"') == "7"
    with pytest.raises(ValueError, match="given twice"):
        parse_overrides(["a=1", "a=2"])
    with pytest.raises(ValueError, match="not of the form key=value"):
        parse_overrides(["=3"])


@pytest.mark.parametrize("argv, dest, expected", [
    (["new", "lstm-tiny", "x", "--set", "hidden_size=32", "--set", "dropout=0.3"], "set",
     ["hidden_size=32", "dropout=0.3"]),
    (["generate", "m", "p", "--kernel", "lstm=reference", "--kernel", "gru=reference"], "kernel",
     ["lstm=reference", "gru=reference"]),
    (["convert", "word-lm", "a.pt", "out", "--set", "bos_token_id=0", "--set", "eos_token_id=1"], "set",
     ["bos_token_id=0", "eos_token_id=1"]),
    (["lab", "--distances", "4", "--distances", "8", "16", "--seeds", "0", "--seeds", "2"], "distances", [4, 8, 16]),
    (["lab", "--architectures", "lstm", "--architectures", "gru"], "architectures", ["lstm", "gru"]),
    (["lab", "sweep", "--rates", "0.01", "--rates", "0.02"], "rates", [0.01, 0.02]),
])
def test_a_list_option_given_twice_adds_to_its_list(argv, dest, expected):
    # (the second replaced the first without a word: `--set hidden_size=32 --set dropout=0.3` made a model of the
    # preset's width, and `--kernel` a typo in the first never reported)
    assert getattr(build_parser().parse_args(argv), dest) == expected


def test_a_misspelt_seqzoo_environment_variable_is_said(monkeypatch, capsys):
    monkeypatch.setenv("SEQZOO_KERNEL", "lstm=reference")
    assert main(["list"]) == 0
    err = capsys.readouterr().err
    assert "SEQZOO_KERNEL is not one seqzoo reads (did you mean SEQZOO_KERNELS?)" in err
    monkeypatch.delenv("SEQZOO_KERNEL")
    assert main(["list"]) == 0 and "not one seqzoo reads" not in capsys.readouterr().err
    # (in lower case it was passed over without a word: no traceback for `seqzoo_debug=1 seqzoo train ...`)
    monkeypatch.setenv("seqzoo_debug", "1")
    assert main(["list"]) == 0
    assert "seqzoo_debug is not one seqzoo reads (did you mean SEQZOO_DEBUG?)" in capsys.readouterr().err


def test_one_command_warns_once_about_a_misspelt_variable_and_an_unknown_config_field(tmp_path, monkeypatch,
                                                                                      capfd, caplog):
    """`seqzoo generate` read the folder's config.json three times (config, model, tokenizer) and warned about its
    unknown field each time; the kernel registry warned about a misspelt SEQZOO_KERNEL again, in other words."""
    folder = tmp_path / "m"
    assert main(["new", "gru-tiny", str(folder)]) == 0
    values = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**values, "hiden_size": 3}))
    monkeypatch.setenv("SEQZOO_KERNEL", "gru=reference")
    monkeypatch.setenv("SEQZOO_KERNELS", "rnn=reference")  # (a change: the registry rebuilds, as in a new process)
    capfd.readouterr()
    with caplog.at_level("WARNING"):
        assert main(["generate", str(folder), "hi", "--max-new-tokens", "2"]) == 0
    said = capfd.readouterr().err + caplog.text
    assert said.count("'hiden_size' (did you mean 'hidden_size'?)") == 1, said
    assert said.count("SEQZOO_KERNEL ") == 1 and "not one seqzoo reads" in said, said


def test_generate_names_a_damaged_config_json(tmp_path, capsys):
    """A config.json nested past Python's recursion limit failed as "an unexpected RecursionError ... report it"."""
    folder = tmp_path / "m"
    assert main(["new", "gru-tiny", str(folder)]) == 0
    for text, said in (("[" * 100_000, "maximum recursion depth exceeded"), ('{"a":', "Expecting value")):
        (folder / "config.json").write_text(text)
        line = _error(capsys, ["generate", str(folder), "hi"])
        assert f"holds no model that loads: config.json is damaged ({said}" in line, line


def test_an_argument_that_is_not_utf8_is_refused_by_name(tmp_path, capsys):
    """A folder name of other bytes (``$'m\\xff'``): `seqzoo new` failed in the tokenizer's save with a codec error
    naming no file, and `seqzoo generate` called the weights of such a folder damaged."""
    folder = str(tmp_path / "m") + "\udcff"  # (how Python hands on the byte 0xff of an argument)
    for argv in (["new", "gru-tiny", folder], ["generate", folder, "hi"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"the argument '{tmp_path}{os.sep}m\\xff' is not valid UTF-8 text" in err, err
    assert not os.path.exists(folder)


def test_an_argument_with_a_surrogate_that_stands_for_no_byte_is_refused_by_name(capsys):
    # main(argv) called from Python with "\ud800" (no surrogate escape of a byte): the error line itself failed
    # with a UnicodeEncodeError traceback.
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "m", "ab\ud800"])
    assert exit_info.value.code == 2
    assert "the argument 'ab\\ud800' is not valid UTF-8 text" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["generate", "m", "x", "--num-beams", "x"],
     "error: seqzoo generate: argument --num-beams: invalid int value: 'x'"),
    (["generat", "x"], "error: seqzoo: argument COMMAND: invalid choice: 'generat'"),
    (["list", "--bogus"], "error: seqzoo list: unrecognized arguments: --bogus (see `seqzoo list --help`)"),
    # an option of another command is named by the parser of the command written, whose --help lists its own
    (["generate", "m", "x", "--prompt", "y"],
     "error: seqzoo generate: unrecognized arguments: --prompt y (see `seqzoo generate --help`)"),
    (["lab", "gradients", "--bogus"],
     "error: seqzoo lab gradients: unrecognized arguments: --bogus (see `seqzoo lab gradients --help`)"),
    # a prompt beginning with '-': argparse read it as -h given "ello", and the line said nothing of '--'
    (["generate", "m", "-hello"], "error: seqzoo generate: argument -h/--help: ignored explicit argument 'ello'; a "
     "value that begins with '-', such as '-hello', goes after '--': `seqzoo generate ... -- '-hello'` (see"),
    (["generate", "m", "x", "--num-beams", "-2x"],  # (an option's value: '--' is no help there)
     "error: seqzoo generate: argument --num-beams: expected one argument (see `seqzoo generate --help`)"),
])
def test_argparse_usage_errors_are_one_error_line_too(argv, message, capsys):
    """argparse printed its usage block before its own error line; the README promises one `error:` line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(message), err


def test_show_attention_prints_a_multibyte_target_as_text(tmp_path, capsys):
    # The target line was the tokens' cells joined: each byte of "ö" or "🙂" is a token of its own, shown as "�".
    folder = tmp_path / "seq2seq"
    assert main(["new", "seq2seq-luong-dot-tiny", str(folder)]) == 0
    capsys.readouterr()
    assert main(["generate", str(folder), "héllo 世界", "--target", "wörld 🙂", "--show-attention"]) == 0
    assert capsys.readouterr().out.startswith("source: héllo 世界\ntarget: wörld 🙂\n")
    # --max-new-tokens with --target was ignored without a word (the target's tokens are read, none generated)
    line = _error(capsys, ["generate", str(folder), "héllo", "--target", "w", "--max-new-tokens", "5"])
    assert "--max-new-tokens=5 has no effect with --target: the target's own tokens are read" in line
    # The greedy target is the text a plain generate prints.
    assert main(["generate", str(folder), "héllo 世界", "--max-new-tokens", "6", "--no-stream"]) == 0
    plain = capsys.readouterr().out[:-1]
    assert main(["generate", str(folder), "héllo 世界", "--max-new-tokens", "6", "--show-attention"]) == 0
    assert capsys.readouterr().out.startswith(f"source: héllo 世界\ntarget: {plain} (greedy)\n")
    assert "--compile compiles a causal language model's decode step" in _error(
        capsys, ["generate", str(folder), "héllo", "--compile"])
    # (--no-stream was accepted and changed nothing: the table is printed once either way)
    assert "--no-stream has no effect with --show-attention, --attention-plot or --target" in _error(
        capsys, ["generate", str(folder), "héllo", "--show-attention", "--no-stream"])


def test_generate_says_a_special_token_written_in_the_prompt_is_left_out_of_the_text(model_dir, capsys):
    assert main(["generate", str(model_dir), "a<|endoftext|>b", "--max-new-tokens", "2", "--no-stream"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("ab")
    assert ("note: the prompt holds the tokenizer's special token(s) '<|endoftext|>' (id 257): the model reads them "
            "as such, and the text printed leaves them out") in captured.err
    assert main(["generate", str(model_dir), "ab", "--max-new-tokens", "2", "--no-stream"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_generate_does_not_take_an_unknown_word_for_a_special_token_written(tmp_path, capsys):
    # (the unknown-word token stands for a word the vocabulary lacks: the prompt held "zebra", not "<unk>")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    import seqzoo

    folder = tmp_path / "words"
    model = seqzoo.create_model("lstm-tiny", vocab_size=4, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    model.save_pretrained(folder)
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1, "there": 2, "world": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(folder)
    assert main(["generate", str(folder), "hello zebra", "--max-new-tokens", "2", "--no-stream"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert main(["generate", str(folder), "hello <unk>", "--max-new-tokens", "2", "--no-stream"]) == 0
    assert "note:" not in capsys.readouterr().err  # (the same token either way: no special token is written)


@pytest.mark.parametrize("named", [True, False])
def test_generate_runs_no_tokenizer_code_from_the_folder(model_dir, tmp_path, capsys, monkeypatch, named):
    # A tokenizer defined by code in the folder (auto_map): transformers asked "run the custom code? [y/N]" on a
    # terminal, and ran it on "y". Without a tokenizer_class beside auto_map (an fla RWKV-7 folder's, which a
    # conversion copies), transformers took the seqzoo model's registered tokenizer and failed on another's files.
    import io
    import json
    import shutil

    folder = tmp_path / "custom"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_planted.PlantedTokenizer", None]}
    if named:
        config["tokenizer_class"] = "PlantedTokenizer"
    else:
        config.pop("tokenizer_class", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (folder / "tokenization_planted.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom transformers import PreTrainedTokenizerFast\n"
        "class PlantedTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    line = _error(capsys, ["generate", str(folder), "hi", "--max-new-tokens", "2"])
    assert "tokenizer is defined by Python code in it (tokenization_planted.PlantedTokenizer, auto_map in " \
           "tokenizer_config.json), which seqzoo does not run" in line
    assert not marker.exists()
    if named:  # (where the folder is not read first, a Hub repository's: transformers' refusal, said the same way)
        monkeypatch.setattr("seqzoo.tokenizer._refuse_tokenizer_code", lambda folder: None)
        line = _error(capsys, ["generate", str(folder), "hi", "--max-new-tokens", "2"])
        assert "tokenizer is defined by Python code in it (auto_map in tokenizer_config.json), which seqzoo does " \
               "not run" in line
        assert not marker.exists()


@pytest.mark.parametrize("model_type", ["seqzoo_lstm", "planted"])
def test_model_code_a_folder_names_in_auto_map_never_runs(model_dir, tmp_path, monkeypatch, capsys, model_type):
    # A downloaded folder's config.json pointing auto_map at a module of its own: seqzoo's registered classes load a
    # seqzoo model_type (and publish writes its own bundle and auto_map), another is refused by name; no command
    # asks transformers' "run the custom code? [y/N]" (stdin answers yes) or imports the module.
    import io
    import json
    import shutil

    folder = tmp_path / "planted"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "planted.PlantedConfig",
                                                   "AutoModelForCausalLM": "planted.PlantedModel"})
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (folder / "planted.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 8))
    generate = ["generate", str(folder), "hi", "--max-new-tokens", "2"]
    publish = ["publish", str(folder), "me/planted", "--dry-run", "--output", str(tmp_path / "hub")]
    if model_type == "planted":
        assert "'planted'" in _error(capsys, generate) and "'planted'" in _error(capsys, publish)
    else:
        assert main(generate) == 0 and main(publish) == 0
        assert type(AutoModelForCausalLM.from_pretrained(folder)).__module__.startswith("seqzoo.")
        assert "planted" not in json.dumps(json.loads((tmp_path / "hub" / "config.json").read_text())["auto_map"])
    assert not marker.exists()


def test_new_refuses_token_ids_the_byte_tokenizer_does_not_have(tmp_path, capsys):
    # (accepted, then overwritten in generation_config.json by the tokenizer's: the config disagreed with both)
    line = _error(capsys, ["new", "lstm-tiny", str(tmp_path / "a"), "--set", "eos_token_id=10", "pad_token_id=0"])
    assert line == ("error: pad_token_id=0, eos_token_id=10 disagree with the byte tokenizer saved beside the model, "
                    "whose pad token is 256 and whose bos and eos token is 257: leave the token ids unset (or give "
                    "those), or save the model with a tokenizer of your own (save_pretrained)")
    assert not (tmp_path / "a").exists()
    assert main(["new", "lstm-tiny", str(tmp_path / "b"), "--set", "eos_token_id=257", "pad_token_id=256"]) == 0
    assert main(["new", "lstm-tiny", str(tmp_path / "c"), "--set", "eos_token_id=[257]"]) == 0  # (a list of one)
    assert "eos_token_id=[257, 10] disagree" in _error(capsys, ["new", "lstm-tiny", str(tmp_path / "d"), "--set",
                                                                "eos_token_id=[257, 10]"])


def test_an_output_encoding_that_cannot_print_the_text_is_named():
    from seqzoo.cli import describe_error

    err = UnicodeEncodeError("ascii", "Hé", 1, 2, "ordinal not in range(128)")
    assert describe_error(err) == ("cannot print 'é': the output's encoding is ascii; set PYTHONIOENCODING=utf-8 (or a "
                                   "UTF-8 locale) to print any text")


def test_generate_refuses_an_empty_prompt_a_file_and_seq2seq_flags_on_a_causal_lm(model_dir, capsys):
    assert _error(capsys, ["generate", str(model_dir), ""]) == "error: the prompt is empty: give at least one character"
    # The text "<|pad|>" became the padding token, which the model read as input and the text printed left out.
    assert "the prompt holds '<|pad|>', which the tokenizer of" in _error(capsys, ["generate", str(model_dir),
                                                                            "ab<|pad|>"])
    line = _error(capsys, ["generate", str(model_dir / "config.json"), "hi"])
    assert line.endswith("config.json' is a file; give the folder that holds config.json and the weights")
    for flags in (["--show-attention"], ["--target", "x"], ["--attention-plot", "a.png"]):
        line = _error(capsys, ["generate", str(model_dir), "hi", *flags])
        assert "--show-attention, --attention-plot and --target need an encoder-decoder (seq2seq) model" in line
        assert "holds a seqzoo_lstm language model" in line


def test_train_without_a_recipe_names_the_recipe_alone_as_required(capsys):
    # (argparse listed the optional KEY=VALUE overrides as required too)
    with pytest.raises(SystemExit) as stopped:
        main(["train"])
    assert stopped.value.code == 2
    assert one_error_line(capsys.readouterr().err) == ("error: seqzoo train: the following arguments are required: "
                                                       "recipe (see `seqzoo train --help`)")


def _saved_generation_settings(folder: Path, **values) -> None:
    path = folder / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def test_generate_prints_text_whatever_the_saved_generation_settings_say(tmp_path, capsys):
    """A folder's generation_config.json with return_dict_in_generate: true made --no-stream and beams print a Python
    list (['Hello...']), and --show-attention fail as "unexpected"; one with stop_strings was refused for want of the
    tokenizer, which seqzoo generate never passed."""
    assert main(["new", "transformer-tiny", str(tmp_path / "lm"), "--set", "num_hidden_layers=1"]) == 0
    assert main(["new", "seq2seq-bahdanau-tiny", str(tmp_path / "s2s")]) == 0
    capsys.readouterr()
    for flags in (["--no-stream"], ["--num-beams", "2"]):
        assert main(["generate", str(tmp_path / "lm"), "Hello", "--max-new-tokens", "3", *flags]) == 0
        plain = capsys.readouterr().out
        _saved_generation_settings(tmp_path / "lm", return_dict_in_generate=True)
        assert main(["generate", str(tmp_path / "lm"), "Hello", "--max-new-tokens", "3", *flags]) == 0
        assert capsys.readouterr().out == plain and plain.startswith("Hello")
        _saved_generation_settings(tmp_path / "lm", return_dict_in_generate=False)
    _saved_generation_settings(tmp_path / "s2s", return_dict_in_generate=True)
    assert main(["generate", str(tmp_path / "s2s"), "abc", "--max-new-tokens", "3", "--show-attention"]) == 0
    assert "attends most to" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "lm")
    inputs = tokenizer("Hello", return_tensors="pt")
    stop = tokenizer.decode(model.generate(**inputs, max_new_tokens=2, do_sample=False)[0, -1])
    _saved_generation_settings(tmp_path / "lm", stop_strings=[stop])
    assert main(["generate", str(tmp_path / "lm"), "Hello", "--max-new-tokens", "8", "--no-stream"]) == 0
    assert capsys.readouterr().out.rstrip("\n").endswith(stop)


def test_generate_prints_one_text_whatever_the_saved_number_of_sequences(tmp_path, capsys):
    """A folder saved to sample two sequences (do_sample: true, num_return_sequences: 2) made seqzoo generate fail
    with "TextStreamer only supports batch size 1" when sampling, and with transformers' "Greedy methods ... do not
    support `num_return_sequences`" when greedy; it prints the one text, as --no-stream printed the first."""
    assert main(["new", "lstm-tiny", str(tmp_path / "lm"), "--set", "num_hidden_layers=1"]) == 0
    capsys.readouterr()
    for flags in ([], ["--temperature", "0.8", "--seed", "3"]):
        prompt = ["generate", str(tmp_path / "lm"), "Hello", "--max-new-tokens", "5", *flags]
        _saved_generation_settings(tmp_path / "lm", do_sample=False, num_return_sequences=1)
        assert main(prompt) == 0
        plain = capsys.readouterr().out
        _saved_generation_settings(tmp_path / "lm", do_sample=True, num_return_sequences=2)
        assert main(prompt) == 0
        assert capsys.readouterr().out == plain
        assert main([*prompt, "--no-stream"]) == 0
        assert capsys.readouterr().out == plain and plain.startswith("Hello")


def test_output_whose_reader_went_away_ends_quietly():
    # `seqzoo list | head -1`: the pipe's reader closed; that was reported as "error: [Errno 32] Broken pipe", exit 2.
    if not SCRIPT.exists():
        pytest.skip(f"the seqzoo console script is not installed next to {sys.executable} (pip install -e .)")
    read, write = os.pipe()
    os.close(read)  # (the reader is gone before anything is written: every write fails)
    try:
        done = subprocess.run([str(SCRIPT), "list", "--params"], stdout=write, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


def test_a_broken_pipe_that_is_not_the_output_is_an_error_line(capsys, monkeypatch):
    # (a child process's pipe or a socket inside a command, standard output fine: one line and status 2, not a
    # traceback)
    def broken(args):
        raise BrokenPipeError(32, "Broken pipe (a child process's pipe)")

    monkeypatch.setattr("seqzoo.cli.cmd_list", broken)
    parser = build_parser()
    monkeypatch.setattr("seqzoo.cli.build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        if action.get_default("func") is not None and action.prog.endswith(" list"):
            action.set_defaults(func=broken)
    assert main(["list"]) == 2
    assert "error: [Errno 32] Broken pipe (a child process's pipe)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, hint", [(["lab", "--smoke"], "`seqzoo lab --resume`"),
                                        (["lab", "bidirectional", "--smoke"], None),
                                        (["lab", "seq2seq", "--smoke"], None)])
def test_an_interrupted_lab_sub_command_is_not_told_to_resume(argv, hint, capsys, monkeypatch):
    # `seqzoo lab bidirectional` has no --resume (its own line says so), but Ctrl-C told it to run
    # `seqzoo lab --resume`, which it then refused as an unknown argument
    import seqzoo.lab.cli as lab_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    for name in ("cmd_lab", "run_lab", "run_bidirectional", "run_seq2seq", "cmd_bidirectional", "cmd_seq2seq"):
        if hasattr(lab_cli, name):
            monkeypatch.setattr(lab_cli, name, interrupted)
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    monkeypatch.setattr(args, "func", interrupted, raising=False)
    monkeypatch.setattr("seqzoo.cli.build_parser", lambda: type("P", (), {
        "parse_known_args": lambda self, argv: (args, [])})())
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("interrupted")
    assert (hint in err) if hint else "--resume" not in err


@pytest.mark.parametrize("converter, module", [("rwkv7", "seqzoo.conversions.rwkv7"),
                                               ("word-lm", "seqzoo.conversions.word_lm")])
def test_a_converters_set_option_help_names_every_settable_field(converter, module):
    # (`seqzoo convert rwkv7 --help` left use_cache out)
    import importlib

    def subcommands(parser):
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices

    (option,) = [a for a in subcommands(subcommands(build_parser())["convert"])[converter]._actions
                 if "--set" in a.option_strings]
    named = option.help.replace("pad/bos/eos_token_id", "pad_token_id bos_token_id eos_token_id")
    assert [field for field in importlib.import_module(module).OVERRIDABLE if field not in named] == []
