"""benchmarks/bench_generate_layout.py takes family names and refuses anything else by name (`--help` used to
become the preset '--help-small' and end in a traceback)."""

from __future__ import annotations

import pytest

from tests.conftest import load_benchmark


def test_families_default_to_every_one_and_keep_the_order_given():
    bench = load_benchmark("bench_generate_layout")
    assert bench.parse_families([]) == bench.FAMILIES
    assert bench.parse_families(["rwkv7", "gru"]) == ["rwkv7", "gru"]


@pytest.mark.parametrize("argv", [["--help-me"], ["lstn"], ["gru", "transformers"]])
def test_an_unknown_family_or_option_is_refused_with_the_allowed_names(argv, capsys):
    bench = load_benchmark("bench_generate_layout")
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_families(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid FAMILY" in err or "unrecognized arguments" in err, err
    assert "rwkv7" in err or "unrecognized arguments" in err, err


def test_help_prints_usage(capsys):
    bench = load_benchmark("bench_generate_layout")
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_families(["--help"])
    assert exit_info.value.code == 0
    assert "FAMILY" in capsys.readouterr().out
