"""benchmarks/bench_decode.py in its smoke mode: every family against its peer at tiny sizes, one repeat.

Run in a child process: BlinkDL's ``rwkv`` package (the RWKV-7 peer) sets process-wide torch flags when imported.
The script itself refuses to time two models that compute different logits, or a generate() whose tokens differ
from the raw loop's, so a run that finishes is also a check that every peer holds the same weights.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from seqzoo.kernels import product_choice
from tests.conftest import load_benchmark

# The benchmark scripts' smoke runs: their transformers peers (Llama, Mamba) are loaded by the tests of the
# exporters on every supported release; CI runs these on the newest only.
pytestmark = pytest.mark.newest_release_only

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("rwkv", reason="BlinkDL's rwkv package is not installed (pip install rwkv; it is in the dev extra)")


def test_smoke_run_measures_every_family(tmp_path):
    out = tmp_path / "decode.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "benchmarks/bench_decode.py", "--smoke", "--json", str(out)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"bench_decode --smoke failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    results = json.loads(out.read_text())
    assert [r["family"] for r in results] == ["rwkv7", "mamba", "mamba2", "transformer", "lstm", "gru", "rnn"]
    for r in results:
        for part in ("decode_b1", "decode_b8", "prefill"):
            assert r[part]["seqzoo"] > 0 and r[part]["peer"] > 0, (r["family"], part)
        assert {"seqzoo generate", "seqzoo raw", "seqzoo generate, transformers' loop"} <= set(r["generate"])
    assert all("peer generate" in r["generate"] for r in results)  # Llama's own generate / raw loop, the floor
    assert "| rwkv7 | 128 / 2 / 99 | rwkv package | 8 |" in result.stdout
    # The generate table: what generate() adds per token, for the model and for a Llama of its size.
    assert ("| added µs/token | Llama added µs/token | Llama generate / raw | Llama of equal parameters: generate / "
            "raw | generate / raw, transformers' loop | generate / raw |") in result.stdout
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines()
            if line.startswith("| gru |") and len(line.split("|")) == 13]
    assert len(rows) == 1 and all(re.fullmatch(r"-?\d+", cell.strip()) for cell in rows[0][-6:-4]), rows
    assert all(re.fullmatch(r"\d+\.\d\dx", rows[0][i].strip()) for i in (-4, -2, -1)), rows
    # The ratio of a Llama of the GRU's depth and parameter count (0.06M at the smoke size, where the Llama of its
    # width and depth holds 0.14M), and that Llama's size
    assert re.fullmatch(r"\d+\.\d\dx \(\d+ x 2 \(0\.\d+M\)\)", rows[0][-3].strip()), rows
    sizes = {r["family"]: r.get("equal_parameters_llama") for r in results}
    assert sizes["transformer"] is None and all(sizes[f] for f in sizes if f != "transformer"), sizes
    assert all("equal-parameter peer raw" in r["generate"] for r in results if r["family"] != "transformer")


def test_smoke_run_with_compiled_steps(tmp_path):
    # --compile adds seqzoo's compiled decode step (model.compile_decoding()); dynamo's eager backend keeps it fast.
    # --head-layout columns adds the model with its vocabulary head stored by columns, eager and compiled;
    # --weight-layout columns the model with every weight matrix stored by columns (its prefill timed too);
    # --other-products the model with the other choice of products than this processor's (product_choice);
    # --compile-unguarded the step compiled as seqzoo generate --compile compiles it (fixed_model_options());
    # --fixed-model the eager steps in model.fixed_while_decoding(), as seqzoo generate decodes, the model's and each
    # eager variant's (no prefill of their own).
    out = tmp_path / "decode.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "benchmarks/bench_decode.py", "--smoke", "--families", "gru",
                             "--compile", "eager", "--head-layout", "columns", "--weight-layout", "columns",
                             "--other-products", "--compile-unguarded", "--fixed-model", "--json", str(out)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"bench_decode --compile failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    other = "torch" if product_choice.seqzoo_products() else "seqzoo"
    variants = ("seqzoo compiled", "seqzoo columns", "seqzoo all columns", "seqzoo compiled columns",
                "seqzoo compiled all columns", f"seqzoo, {other}'s products", f"seqzoo compiled, {other}'s products",
                "seqzoo compiled, unguarded", "seqzoo, model fixed", "seqzoo columns, model fixed",
                "seqzoo all columns, model fixed", f"seqzoo, {other}'s products, model fixed")
    for r in json.loads(out.read_text()):
        for batch in (1, 8):
            assert set(r[f"decode_b{batch}"]) == {"seqzoo", "peer", *variants}
            assert all(r[f"decode_b{batch}"][name] > 0 for name in variants)
        compiled = [name for name in variants if "compiled" in name]
        assert set(r["compile_s"]) == {f"{name} b{batch}" for name in compiled for batch in (1, 8)}
        assert set(r["prefill"]) == {"seqzoo", "peer", "seqzoo columns", "seqzoo all columns",
                                     f"seqzoo, {other}'s products"}
        assert r["products"] == ("seqzoo" if other == "torch" else "torch")
    assert "| gru | 64 x 2 (0.1M) | 8 | seqzoo compiled columns |" in result.stdout
    assert "| gru | 64 x 2 (0.1M) | 1 | seqzoo all columns |" in result.stdout
    assert "| gru | 64 x 2 (0.1M), seqzoo all columns | " in result.stdout
    assert "eager / variant" in result.stdout


def load_bench_decode(monkeypatch):
    return load_benchmark("bench_decode", monkeypatch)  # it imports the rwkv package only to build an RWKV-7 pair


def test_unknown_family_is_refused(capsys, monkeypatch):
    bench = load_bench_decode(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--smoke", "--families", "rwkv7,rwkv8"])
    assert exit_info.value.code == 2
    assert "unknown family rwkv8; choose from rwkv7, mamba" in capsys.readouterr().err


class _Clock:
    """time.perf_counter for interleaved(): each timed call takes the case's seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def case(self, seconds: float, calls: list):
        def run():
            calls.append(seconds)
            self.now += seconds
        return lambda: run


def test_fast_cases_are_timed_in_more_rounds_until_the_time_asked_for(monkeypatch):
    # A set of cases of a few milliseconds is timed in as many rounds as make min_seconds of timed calls (at most
    # MAX_ROUNDS); a slow set, or min_seconds 0, keeps the repeats; every round runs every case once.
    bench = load_bench_decode(monkeypatch)
    clock = _Clock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    for seconds, min_seconds, expected in ((0.002, 1.0, 167), (0.002, 0.0, 3), (0.4, 1.0, 3), (0.1, 1.0, 4),
                                           (1e-6, 1.0, bench.MAX_ROUNDS)):
        calls: list = []
        rounds: list = []
        medians = bench.interleaved({"a": clock.case(seconds, calls), "b": clock.case(2 * seconds, calls)}, 3,
                                    min_seconds=min_seconds, rounds=rounds)
        assert rounds == [expected], (seconds, min_seconds)
        assert len(calls) == 2 * (expected + 1)  # (and the warm-up round, untimed)
        assert medians == pytest.approx({"a": seconds, "b": 2 * seconds})
    assert bench.interleaved({"a": clock.case(0.5, [])}, 2, warmup=0, min_seconds=1.0) == {"a": 0.5}


def test_the_rounds_are_recorded_and_the_time_asked_for_is_checked(capsys, monkeypatch):
    bench = load_bench_decode(monkeypatch)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    [result] = bench.main(["--smoke", "--families", "gru", "--generate-only", "--min-seconds", "0.05"])
    assert result["settings"]["min_seconds"] == 0.05
    assert set(result["rounds"]) == {"generate", "peer generate", "equal-parameter peer generate"}
    assert min(result["rounds"].values()) >= 1
    assert "interleaved rounds a set of cases (at least 1, until 0.05 s timed)" in capsys.readouterr().out
    for value in ("-1", "nan", "inf"):
        with pytest.raises(SystemExit) as exit_info:
            bench.main(["--smoke", "--min-seconds", value])
        assert exit_info.value.code == 2
        assert f"--min-seconds must be a number of seconds, 0 or more, got {float(value)}" in capsys.readouterr().err


def test_generate_only_times_generate_alone_with_the_repeats_and_tokens_asked_for(capsys, monkeypatch):
    bench = load_bench_decode(monkeypatch)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # (the suite's thread count stays as it is)
    [result] = bench.main(["--smoke", "--families", "gru", "--generate-only", "--repeats", "2", "--new-tokens", "3"])
    assert "decode_b1" not in result and "prefill" not in result
    assert set(result["generate"]) == {"seqzoo generate", "seqzoo raw", "seqzoo generate, transformers' loop",
                                       "peer generate", "peer raw", "equal-parameter peer generate",
                                       "equal-parameter peer raw"}
    assert result["settings"]["repeats"] == 2 and result["settings"]["new_tokens"] == 3
    report = capsys.readouterr().out
    assert "| gru | 64 x 2 (0.1M) | 3 |" in report and "peer / seqzoo |" not in report
    for flag in ("--repeats", "--new-tokens", "--steps"):
        with pytest.raises(SystemExit) as exit_info:
            bench.main(["--smoke", flag, "0"])
        assert exit_info.value.code == 2 and f"{flag} must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--smoke", "--generate-only", "--steps", "4"])
    assert exit_info.value.code == 2 and "not the decode loop that --steps sets" in capsys.readouterr().err
    # --compile-plain times inductor without seqzoo's pass beside --compile's inductor: alone or with another backend,
    # it would time nothing; --compile-unguarded, alone, too.
    for flags, named in ((["--compile-plain"], "give --compile (inductor)\n"),
                         (["--compile", "eager", "--compile-plain"], "not --compile eager"),
                         (["--compile-unguarded"], "beside --compile's; give --compile too")):
        with pytest.raises(SystemExit) as exit_info:
            bench.main(["--smoke", *flags])
        assert exit_info.value.code == 2 and named in capsys.readouterr().err
    # The variants of the decode step are not built when only generate() is timed: asking for one is refused.
    for flags in (["--compile"], ["--head-layout", "columns"], ["--weight-layout", "columns", "--compile", "eager"],
                  ["--other-products"], ["--fixed-model"]):
        with pytest.raises(SystemExit) as exit_info:
            bench.main(["--smoke", "--generate-only", *flags])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "--generate-only times generate() of the model as built; --" in err
        assert all(flag in err for flag in flags if flag.startswith("--"))


def test_head_layout_benchmark_runs_and_refuses_nonsense():
    result = subprocess.run([sys.executable, "benchmarks/bench_head_layout.py", "--hidden", "32", "--vocab", "50",
                             "--batch", "1", "3", "--repeats", "1"],
                            cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 32 | 50 |")]
    assert [row.split("|")[3].strip() for row in rows] == ["1", "3"]
    assert all(row.rstrip(" |").endswith("x") for row in rows)
    result = subprocess.run([sys.executable, "benchmarks/bench_head_layout.py", "--vocab", "0"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--vocab takes positive sizes; got [0]" in result.stderr


def test_head_layout_benchmark_cycles_through_a_set_of_weights(capsys):
    bench = load_benchmark("bench_head_layout")
    # --set-mb cycles through several weights of each shape (here 0.05 MB / 6.4 kB: 8 of them).
    report = bench.main(["--hidden", "32", "--vocab", "50", "--batch", "1", "--repeats", "1", "--set-mb", "0.05"])
    assert "weights cycled through 0.05 MB" in report
    assert [line for line in report.splitlines() if line.startswith("| 32 | 50 | 1 |")]
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--set-mb", "-1"])
    assert exit_info.value.code == 2 and "--set-mb takes 0-4096 MB; got -1.0" in capsys.readouterr().err


def test_the_same_function_check_compares_the_prefill_too(monkeypatch, tmp_path):
    # A peer whose prefill logits are wrong but whose state (and so its next step) is right must be refused: the
    # prefill is timed against seqzoo's too.
    bench = load_bench_decode(monkeypatch)
    with torch.no_grad():
        pair = bench.family_pair("gru", "tiny", tmp_path)
        vocab = pair.ours.config.vocab_size - 3
        bench.check_same_function(pair, vocab)  # the real peer passes

        class WrongPrefill(bench.Runner):
            def __init__(self, runner):
                self.runner = runner

            def prefill(self, ids):
                logits, state = self.runner.prefill(ids)
                return logits + 1.0, state

            def step(self, tokens, state):
                return self.runner.step(tokens, state)

        pair.peer = WrongPrefill(pair.peer)
        with pytest.raises(SystemExit, match="disagree after the prefill"):
            bench.check_same_function(pair, vocab)


def test_the_same_function_check_sees_in_float64_a_slip_float32_drift_would_hide(monkeypatch, tmp_path):
    # Layer 0's A_log 10% off moves the logits by 1.9e-4 of their scale: inside the float32 bound (4e-4), far outside
    # the float64 one.
    bench = load_bench_decode(monkeypatch)
    with torch.no_grad():
        pair = bench.family_pair("mamba", "tiny", tmp_path)
        vocab = pair.ours.config.vocab_size - 3
        bench.check_same_function(pair, vocab)
        pair.ours.model.layers[0].mixer.A_log.mul_(1.1)
        with pytest.raises(SystemExit, match=r"disagree after the prefill \(in float64\)"):
            bench.check_same_function(pair, vocab)


def test_rwkv7_benchmark_times_the_wkv7_backends_interleaved(monkeypatch):
    # Each backend is forced around its own calls, so the comparison interleaves them (reference, chunked, ...)
    # instead of timing one backend's repeats after the other's; every backend's logits are still compared.
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench = load_benchmark("bench_rwkv7", monkeypatch)
    seen = []
    compare = bench.compare

    def spy(fns, repeats, warmup):
        seen.append(list(fns))
        return compare(fns, repeats=repeats, warmup=warmup)

    monkeypatch.setattr(bench, "compare", spy)
    import seqzoo

    torch.manual_seed(0)
    model = seqzoo.create_model("rwkv7-tiny", output_init_gain=0.5).eval()
    rows = bench.kernel_rows(model, repeats=1)
    backends = bench.available_backends("wkv7")
    assert seen == [backends, backends] and "reference" in backends
    assert len(rows) == 2 * (len(backends) - 1)
    assert all(float(row[-1]) < 1e-3 for row in rows), rows  # max |logit difference| to the reference


def test_steps_sets_the_length_of_each_timed_decode_loop(capsys, monkeypatch):
    bench = load_bench_decode(monkeypatch)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # (the suite's thread count stays as it is)
    loops = []
    decode_case = bench.decode_case
    monkeypatch.setattr(bench, "decode_case", lambda runner, ids, steps: loops.append(steps) or decode_case(
        runner, ids, steps))
    [result] = bench.main(["--smoke", "--families", "gru", "--steps", "3"])
    assert result["settings"]["steps"] == 3 and loops and set(loops) == {3}


def test_head_layout_benchmark_times_the_decode_steps_product_beside(capsys):
    bench = load_benchmark("bench_head_layout")
    report = bench.main(["--hidden", "1024", "--vocab", "512", "--batch", "1", "--repeats", "1", "--onednn"])
    lines = report.splitlines()
    assert "by rows, decode step's product µs | rows / step's |" in lines[2]
    (row,) = [line for line in lines if line.startswith("| 1024 | 512 | 1 |")]
    cells = [cell.strip() for cell in row.strip(" |").split("|")]
    assert len(cells) == 8 and cells[5].endswith("x") and cells[7].endswith("x") and float(cells[6]) > 0


@pytest.mark.parametrize("width", [1040, 1072])
def test_llama_of_equal_parameters_never_picks_an_odd_head_dim(width, monkeypatch):
    """Widths 1040, 1072, 2080, 3120 pass the filter ``w % (w // 64) == 0`` with head_dim 65 / 67, which LlamaConfig
    refuses (RoPE needs an even head_dim); a real case: ``--rwkv7-sizes 1216x1x300`` lands on 1072."""
    bench = load_bench_decode(monkeypatch)
    layers, vocab = 1, 50
    target = layers * (16 * width * width + 2 * width) + width + 2 * vocab * width

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.empty(target, device="meta"))
            self.config = types.SimpleNamespace(num_hidden_layers=layers, vocab_size=vocab, pad_token_id=0,
                                                bos_token_id=1, eos_token_id=1)

    llama = bench.llama_of_equal_parameters(Model())
    assert llama.config.head_dim % 2 == 0


def test_rnn_step_parts_runs_and_checks_its_operations():
    # (the script refuses to time hand-written operations that do not give the model's logits)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "benchmarks/bench_rnn_step_parts.py", "--hidden-size", "32", "--calls",
                             "2", "--batches", "1", "--loops", "2", "--steps", "3"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "| the seqzoo model's step, called directly, model fixed |" in result.stdout
    assert "then 3 steps; medians of 2 loops" in result.stdout
    for case in ("seqzoo, as built", "seqzoo, the table's value check taken out", "the nn.RNN step loop"):
        assert f"| {case} | " in result.stdout
