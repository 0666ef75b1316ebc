"""``compile_decoding()`` with two threads decoding one model at once, and the mark of a step run eagerly (this
thread's, this model's). The compiled forward is a stand-in (nothing is traced), and a hook holds one thread's step
where the test needs it."""

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


def _stand_in(model, calls, forwards=None):
    """A compiled forward that records its calls (nothing is traced)."""
    model.__dict__[ATTRIBUTE] = CompiledDecoding(lambda *args, **kwargs: calls.append(model) or "compiled",
                                                 _module_forwards(model) if forwards is None else forwards)


def test_the_step_after_one_run_eagerly_runs_compiled_again():
    # The mark that this thread steps the model eagerly ends with that step: the thread's next step is compiled.
    model, cache = _model_and_cache()
    calls = []
    _stand_in(model, calls)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda module, args, output: None)
    try:
        eager = _step(model, cache)  # (a global module hook: run eagerly)
    finally:
        handle.remove()
    assert calls == [] and eager.logits.shape[:2] == (1, 1)
    assert _step(model, cache) == "compiled" and calls == [model]


def test_another_model_stepped_inside_an_eager_step_runs_compiled():
    # The mark is the model's own: another compiled model's step made inside it (from a hook) is not run eagerly.
    model, cache = _model_and_cache()
    other, other_cache = _model_and_cache()
    calls, inner = [], []
    _stand_in(model, calls, forwards={torch.nn.Identity: None})  # (a class's forward changed since: run eagerly)
    _stand_in(other, calls)
    model.lm_head.register_forward_hook(lambda module, args, output: inner.append(_step(other, other_cache)))
    assert _step(model, cache).logits.shape[:2] == (1, 1)
    assert inner == ["compiled"] and calls == [other]
