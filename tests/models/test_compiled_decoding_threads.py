"""``compile_decoding()`` with two threads decoding one model at once. The compiled forward is a stand-in (nothing is
traced), and a hook holds one thread's step where the test needs it."""

from __future__ import annotations

import copy
import threading

import torch

from seqzoo.models.compat import output_cache
from seqzoo.models.compiled_decoding import ATTRIBUTE, CompiledDecoding, _module_forwards
from tests.conftest import FAMILIES, tiny_model

PROMPT = torch.tensor([[5, 17, 33, 8, 61]])
WAIT = 10  # seconds, at most: each wait ends as soon as the other thread gets there


def _model_and_cache():
    model = tiny_model(FAMILIES["lstm"])
    with torch.no_grad():
        cache = output_cache(model(PROMPT, use_cache=True))
    return model, cache


def _step(model, cache):
    with torch.no_grad():
        return model(PROMPT[:, -1:], cache=copy.deepcopy(cache), use_cache=True)


def test_a_step_run_eagerly_leaves_the_compiled_forward_to_other_threads_and_compile_decoding_false_holds():
    # A step that cannot run compiled (here: a global module hook) ran eagerly with the compiled forward taken off the
    # model: other threads' steps then ran eagerly too, one that had read it failed with a KeyError, and the forward
    # was put back at the end even where compile_decoding(False) had taken it off meanwhile.
    model, cache = _model_and_cache()
    model.__dict__[ATTRIBUTE] = CompiledDecoding(lambda *args, **kwargs: None, _module_forwards(model))
    inside, release = threading.Event(), threading.Event()

    def hook(module, args, output):
        if module is model.lm_head and threading.current_thread().name == "A":
            inside.set()
            release.wait(WAIT)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        outputs = []
        thread = threading.Thread(target=lambda: outputs.append(_step(model, cache)), name="A")
        thread.start()
        assert inside.wait(WAIT)
        held = ATTRIBUTE in model.__dict__
        model.compile_decoding(False)
        release.set()
        thread.join(WAIT)
    finally:
        handle.remove()
    assert held
    assert ATTRIBUTE not in model.__dict__
    torch.testing.assert_close(outputs[0].logits, _step(model, cache).logits)  # (the eager step computed the step)
