"""seqzoo RWKV-7 against BlinkDL's own ``rwkv`` package (pip ``rwkv``, its x070 model on CPU in float32).

A random ``.pth`` in RWKV-LM's layout is converted with ``seqzoo convert rwkv7``; the package loads the same file.
The package reads ``RWKV_V7_ON`` / ``RWKV_CUDA_ON`` when it is imported and then sets process-wide torch flags
(cuDNN benchmark, TF32, JIT autocast), so it runs in a child process with ``RWKV_CUDA_ON=0``: its CPU path, no
compiled kernel. Compared: the logits of every position token by token (the package's one-token step) against
seqzoo's parallel forward, and after a prefill (the package's sequence mode on the prompt, then single steps on the
tokens seqzoo generated greedily) against seqzoo's cached generation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from seqzoo.conversions.rwkv7 import convert_rwkv7
from tests.models.test_rwkv7_reference import random_x070_checkpoint

pytest.importorskip("rwkv", reason="BlinkDL's rwkv package is not installed (pip install rwkv; it is in the dev extra)")

TOKENS = [5, 17, 33, 8, 61, 12, 40, 3, 50, 9, 3, 60, 44, 21, 6, 2, 13]
PROMPT = TOKENS[:9]
NEW_TOKENS = 6

PACKAGE_RUN = r"""
import json, sys, torch
from rwkv.model import RWKV

path, out = sys.argv[1], sys.argv[2]
tokens, prompt, generated = (json.loads(arg) for arg in sys.argv[3:6])
model = RWKV(path, strategy="cpu fp32")  # the package appends .pth
state, step_logits = None, []
for token in tokens:
    logits, state = model.forward([token], state)
    step_logits.append(logits)
logits, state = model.forward(prompt, None)  # sequence mode: the prompt at once
after_prefill = [logits]
for token in generated[:-1]:
    logits, state = model.forward([token], state)
    after_prefill.append(logits)
torch.save({"steps": torch.stack(step_logits), "after_prefill": torch.stack(after_prefill)}, out)
"""


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory):
    # Two heads of 64 (the package's head size), bf16 values as RWKV-LM saves them.
    sd = random_x070_checkpoint(vocab=67, hidden=128, layers=2, head_size=64, ffn=192, decay=16, iclr=24, value=8,
                                gate=40, seed=11)
    path = tmp_path_factory.mktemp("rwkv") / "random-x070.pth"
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()}, path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint_path):
    return convert_rwkv7(checkpoint_path, dtype=torch.float32)


@pytest.fixture(scope="module")
def generated(model):
    out = model.generate(torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
                         output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, len(PROMPT):].tolist(), torch.cat(out.logits)


@pytest.fixture(scope="module")
def package(checkpoint_path, generated, tmp_path_factory):
    out = tmp_path_factory.mktemp("rwkv-out") / "logits.pt"
    env = {**os.environ, "RWKV_V7_ON": "1", "RWKV_CUDA_ON": "0", "RWKV_JIT_ON": "1", "CUDA_VISIBLE_DEVICES": ""}
    args = [str(checkpoint_path.with_suffix("")), str(out), json.dumps(TOKENS), json.dumps(PROMPT), json.dumps(generated[0])]
    result = subprocess.run([sys.executable, "-c", PACKAGE_RUN, *args], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"the rwkv package failed:\n{result.stdout}\n{result.stderr}"
    return torch.load(out, weights_only=True)


def test_logits_token_by_token(model, package):
    with torch.no_grad():
        logits = model(torch.tensor([TOKENS])).logits[0]
    assert package["steps"].shape == logits.shape
    torch.testing.assert_close(logits, package["steps"], atol=2e-5, rtol=1e-5)


def test_logits_after_a_prefill(generated, package):
    _, logits = generated
    torch.testing.assert_close(logits, package["after_prefill"], atol=2e-5, rtol=1e-5)
