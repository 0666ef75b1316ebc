"""benchmarks/compare_revisions.py reads the ratio rows of a benchmark's tables, each under a name of its own."""

from __future__ import annotations

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
        "generate / raw: gru": 1.19, "generate / raw: gru / 1024 x 2 (12.9M)": 1.10, "generate / raw: rnn": 1.39,
        "Mamba: 4096 / 256": 1.00,
    }


def test_a_row_name_met_in_a_later_table_of_the_same_header_does_not_overwrite_one():
    # bench_decode's decode table (B=1 and B=8 rows of one size) and its prefill table share their last header.
    output = """| family | size | B | peer / seqzoo |
|---|---|---|---|
| rwkv7 | 256 / 4 / 300 | 1 | 0.82x |
| rwkv7 | 256 / 4 / 300 | 8 | 3.34x |

| family | size | prefill tokens | peer / seqzoo |
|---|---|---|---|
| rwkv7 | 256 / 4 / 300 | 512 | 1.97x |
"""
    assert load_benchmark("compare_revisions").ratios(output) == {
        "peer / seqzoo: rwkv7": 0.82, "peer / seqzoo: rwkv7 / 256 / 4 / 300": 3.34,
        "peer / seqzoo: rwkv7 / 256 / 4 / 300 / 512": 1.97,
    }
