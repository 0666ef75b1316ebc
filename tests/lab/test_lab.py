"""The memory lab: `seqzoo lab --smoke` end to end, and the measurements it is built from."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import seqzoo
from seqzoo.cli import main
from seqzoo.lab.gradients import gradient_profile
from seqzoo.lab.measure import decode_profile
from seqzoo.lab.runner import LabConfig, lab_presets, run_lab
from tests.conftest import tiny_model

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_smoke_lab_reports_every_architecture(tmp_path):
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "seqzoo", "lab", "--smoke", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    architectures = seqzoo.list_architectures("causal-lm")
    assert sorted(results["presets"]) == architectures
    failed = [f"{r['arch']}/{r['task']}: {r['error']}" for r in results["runs"] if not r["ok"]]
    assert not failed, failed
    smoke = LabConfig.smoke()
    assert len(results["runs"]) == len(architectures) * (len(smoke.tasks) * len(smoke.distances) + 1)

    report = (out / "report.md").read_text()
    for name in ("lab-memory.png", "lab-text.png", "lab-cost.png", "lab-gradients.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f"]({name})" in report
    summary = report.split("## Summary")[1].split("\n\n")[1].splitlines()[2:]
    assert sorted(re.match(r"\| \*\*(\w+)\*\*", row).group(1) for row in summary) == architectures
    for row in summary:
        cells = [c.strip() for c in row.strip("|").split("|")]
        params, perplexity, accuracy = int(cells[2].replace(",", "")), float(cells[5]), float(cells[7])
        assert params > 0 and 1.0 < perplexity < 1000 and 0.0 <= accuracy <= 1.0, row
        first_bytes, last_bytes = (int(v.replace(",", "")) for v in cells[3].split("→"))
        assert 0 < first_bytes <= last_bytes, row
        tokens_per_second = float(cells[4].replace(",", ""))
        assert tokens_per_second > 0, row
    for arch in architectures:  # every trained text model loads again
        assert (out / "runs" / arch / "text" / "model.safetensors").is_file()
        assert not (out / "runs" / arch / "copy-d2" / "model.safetensors").exists()  # task models are not kept
        assert (out / "runs" / arch / "copy-d2" / "metrics.jsonl").is_file()


def test_gradient_reach_is_zero_without_recurrence_and_nonzero_with_attention():
    rnn = tiny_model("rnn-tiny", vocab_size=258, pad_token_id=256, bos_token_id=257, eos_token_id=257)
    with torch.no_grad():
        for layer in rnn.model.layers:
            layer.weight_hh.zero_()  # h_t no longer depends on h_{t-1}
    profile = gradient_profile(rnn, length=12)
    assert len(profile) == 12 and profile[0] > 0 and all(v == 0 for v in profile[1:])
    transformer = tiny_model("transformer-tiny", vocab_size=258, pad_token_id=256, bos_token_id=257,
                             eos_token_id=257)
    assert all(v > 0 for v in gradient_profile(transformer, length=12))


def test_decode_profile_state_is_fixed_for_recurrent_models_and_grows_for_attention():
    lstm = tiny_model("lstm-tiny")
    rows = decode_profile(lstm, [8, 40], steps=2)
    assert [r["context"] for r in rows] == [8, 40] and all(r["ms_per_token"] > 0 for r in rows)
    assert rows[0]["state_bytes"] == rows[1]["state_bytes"] == lstm.config.state_bytes_per_sequence()
    transformer = tiny_model("transformer-tiny")
    rows = decode_profile(transformer, [8, 40], steps=2)
    # After the prompt and 2 decoded tokens the cache holds context + 2 positions.
    assert rows[1]["state_bytes"] - rows[0]["state_bytes"] == 32 * transformer.config.kv_bytes_per_token()


def test_lab_picks_tiny_presets_and_names_bad_input(tmp_path):
    presets = lab_presets()
    assert sorted(presets) == seqzoo.list_architectures("causal-lm")
    assert presets["lstm"] == "lstm-tiny" and presets["transformer"] == "transformer-tiny"
    with pytest.raises(ValueError, match="unknown architecture 'lstmm'; registered: "):
        lab_presets(["lstmm"])
    with pytest.raises(ValueError, match="unknown task 'recall'; allowed: copy"):
        run_lab(LabConfig.smoke(tasks=["recall"]), tmp_path / "x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="exists and is not a seqzoo lab report"):
        run_lab(LabConfig.smoke(architectures=["rnn"]), tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_lab_gradients_command(tmp_path, capsys):
    code = main(["lab", "gradients", "--out", str(tmp_path), "--length", "16", "--architectures", "rnn",
                 "transformer"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| rnn |" in printed and "| transformer |" in printed
    assert (tmp_path / "gradients.png").read_bytes()[:8] == PNG_MAGIC
    assert "d=15 (relative)" in (tmp_path / "gradients.md").read_text()
    assert main(["lab", "gradients", "--architectures", "nope"]) == 2  # a clear error, not a traceback
