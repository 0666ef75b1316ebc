"""benchmarks/compare_revisions.py reads the ratio rows of a benchmark's tables, each under a name of its own."""

from __future__ import annotations

import sys

from tests.conftest import load_benchmark


def test_every_ratio_row_is_read_under_a_name_of_its_own():
    output = """torch 2.13

| family | size | raw loop ms | generate / raw |
|---|---|---|---|
| gru | 512 x 2 (3.3M) | 28.9 | 1.19x |
| gru | 1024 x 2 (12.9M) | 95.9 | 1.10x |
| rnn | 512 x 2 (1.2M) | 13.9 | 1.39x |
| note | not a ratio | 1 | 2 |

| context | Mamba |
|---|---|
| 4096 / 256 | 1.00x |
"""
    assert load_benchmark("compare_revisions").ratios(output) == {
        "generate / raw: gru / 512 x 2 (3.3M)": 1.19, "generate / raw: gru / 1024 x 2 (12.9M)": 1.10,
        "generate / raw: rnn / 512 x 2 (1.2M)": 1.39, "Mamba: 4096 / 256": 1.00,
    }


def test_a_row_name_met_in_a_later_table_of_the_same_header_does_not_overwrite_one():
    # bench_decode's decode table (B=1 and B=8 rows of two sizes) and its prefill table share their last header.
    output = """| family | size | peer | B | seqzoo ms/token | peer ms/token | peer / seqzoo |
|---|---|---|---|---|---|---|
| rwkv7 | 256 / 4 / 300 | rwkv package | 1 | 3.36 | 2.78 | 0.82x |
| rwkv7 | 256 / 4 / 300 | rwkv package | 8 | 3.83 | 15.51 | 3.34x |
| rwkv7 | 512 / 8 / 300 | rwkv package | 1 | 9.00 | 9.90 | 1.10x |
| rwkv7 | 512 / 8 / 300 | rwkv package | 8 | 9.83 | 35.51 | 3.61x |

| family | size | prefill tokens | seqzoo ms | peer ms | peer / seqzoo |
|---|---|---|---|---|---|
| rwkv7 | 256 / 4 / 300 | 512 | 480.3 | 929.0 | 1.97x |
"""
    # Each name says which row it is: the B=8 row of the first size is not named as if it were the second size's.
    assert load_benchmark("compare_revisions").ratios(output) == {
        "peer / seqzoo: rwkv7 / 256 / 4 / 300 / rwkv package / B=1": 0.82,
        "peer / seqzoo: rwkv7 / 256 / 4 / 300 / rwkv package / B=8": 3.34,
        "peer / seqzoo: rwkv7 / 512 / 8 / 300 / rwkv package / B=1": 1.10,
        "peer / seqzoo: rwkv7 / 512 / 8 / 300 / rwkv package / B=8": 3.61,
        "peer / seqzoo: rwkv7 / 256 / 4 / 300 / prefill tokens=512": 1.97,
    }


def test_a_row_missing_from_one_run_does_not_rename_the_rows_after_it():
    # bench_kernels skips a reference run whose estimate exceeds --budget (its ratio cell is "-"), which depends on
    # the machine's speed: the fwd+bwd row after it must keep its name, or its ratio is compared with the fwd row's.
    def kernels(skip: bool) -> str:
        return f"""| op | sizes | T | pass | reference (ms) | fast backend | fast (ms) | ratio |
|---|---|---:|---|---:|---|---:|---:|
| wkv7 | H=4, K=V=64 | 1024 | fwd | 400.0 | chunked | 100.0 | 4.0x |
| wkv7 | H=4, K=V=64 | 1024 | fwd+bwd | 900.0 | chunked | 300.0 | 3.0x |
| wkv7 | H=4, K=V=64 | 4096 | fwd | {"skipped (~21 s)" if skip else "1600.0"} | chunked | 400.0 | {"-" if skip else "4.0x"} |
| wkv7 | H=4, K=V=64 | 4096 | fwd+bwd | 3000.0 | chunked | 1500.0 | 2.0x |
"""
    ratios = load_benchmark("compare_revisions").ratios
    timed, skipped = ratios(kernels(False)), ratios(kernels(True))
    assert len(timed) == 4 and skipped == {k: v for k, v in timed.items() if not k.endswith("T=4096 / fwd")}
    assert skipped["ratio: wkv7 / H=4, K=V=64 / T=4096 / fwd+bwd"] == 2.0


def test_the_two_sides_take_turns_at_running_first(monkeypatch, tmp_path, capsys):
    module = load_benchmark("compare_revisions")
    for side in ("before", "after"):
        (tmp_path / side / "seqzoo").mkdir(parents=True)
        (tmp_path / side / "seqzoo" / "__init__.py").write_text("")
    calls = []

    def run(script, checkout, extra):
        calls.append(checkout.name)
        return {"peer / seqzoo: x": 2.0 if checkout.name == "after" else 1.0}

    monkeypatch.setattr(module, "run", run)
    monkeypatch.setattr(sys, "argv", ["compare_revisions.py", "--before", str(tmp_path / "before"), "--after",
                                      str(tmp_path / "after"), "--rounds", "4", "bench_foundation.py"])
    module.main()
    assert calls == ["before", "after", "after", "before"] * 2
    out = capsys.readouterr().out
    assert "| bench_foundation.py | peer / seqzoo: x | 1.00x (1.00, 1.00, 1.00, 1.00) | 2.00x" in out
    assert "| 2.000 |" in out and "after / before above 1: the row's ratio grew" in out
