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
