"""Run by the Hub tests in a fresh process in which seqzoo cannot be imported: load exported checkpoints with
torch and transformers alone (``trust_remote_code=True``) and record what they generate.

    python load_checkpoints.py JOB.json RESULT.json

JOB: {"prompt": str, "new_tokens": int, "checkpoints": [{"arch": str, "sources": [folder or repo id, ...],
                                                          "snippet": python code to run, optional}]}

seqzoo, and the optional GPU kernel packages seqzoo can use, are made unimportable before anything else is
imported, as on a machine that has only torch and transformers. The result also describes the kernel registries
the bundled code created. A failure is recorded per checkpoint, with its traceback, so one broken architecture does not
hide the others.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import io
import json
import sys
import traceback


HIDDEN = ("seqzoo", "triton", "mamba_ssm", "causal_conv1d", "fla")


class Hide(importlib.abc.MetaPathFinder):
    """Placed first on sys.meta_path: whatever is installed, importing a HIDDEN package fails as if it were not."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden for this test)", name=name)
        return None


def seqzoo_importable() -> bool:
    try:
        import seqzoo  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def load_and_generate(source: str, job: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
    inputs = tokenizer(job["prompt"], return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**inputs, max_new_tokens=job["new_tokens"], do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
        logits = model(**inputs).logits
        lenient = keyword_leniency(model, inputs, logits)
    cls = type(model)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "tokens": tokens[0].tolist(),
            "logits": logits[0].tolist(), "lenient": lenient}


def keyword_leniency(model, inputs, logits) -> dict:
    """How the bundled forward treats keywords it does not know: a future transformers' new one (a warning, same
    logits) and a misspelling of one it knows (an error), as a bundle must."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        same = torch.equal(model(**inputs, a_future_generate_flag=True).logits, logits)
    try:
        model(**inputs, attention_mak=inputs["attention_mask"])
        misspelling = "accepted"
    except TypeError as err:
        misspelling = str(err)
    return {"same_logits": same, "warnings": [str(w.message) for w in caught], "misspelling": misspelling}


def printed_by(run) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        run()
    return buffer.getvalue()


def check(item: dict, job: dict) -> dict:
    result = {source: load_and_generate(source, job) for source in item["sources"]}
    if item.get("snippet"):
        code = compile(item["snippet"], "README.md usage snippet", "exec")
        result["snippet"] = printed_by(lambda: exec(code, {"__name__": "__main__"}))
    return result


def bundled_kernels() -> dict:
    """Across the kernel registries of the bundled code: ops with no available backend, and each backend given as
    a lazy "module:attr" string with whether it would load if its own availability probe said yes."""
    import dataclasses

    empty_ops, lazy = set(), {}
    for name, module in list(sys.modules.items()):
        if not name.endswith(".seqzoo_kernels_registry"):
            continue
        for op in module.list_ops():
            if not module.available_backends(op):
                empty_ops.add(op)
            for backend in module.get_op(op).backends.values():
                if isinstance(backend.impl, str):
                    probe_says_yes = dataclasses.replace(backend, is_available=lambda: True)
                    lazy[f"{op}/{backend.name}"] = {"impl": backend.impl, "available": probe_says_yes.available()}
    return {"ops_without_backend": sorted(empty_ops), "lazy_backends": lazy}


def main() -> None:
    job_path, result_path = sys.argv[1:3]
    with open(job_path) as f:
        job = json.load(f)
    sys.meta_path.insert(0, Hide())
    import transformers

    results = {"seqzoo_importable": seqzoo_importable(), "transformers_version": transformers.__version__,
               "checkpoints": {}}
    for item in job["checkpoints"]:
        try:
            results["checkpoints"][item["arch"]] = check(item, job)
        except Exception:
            results["checkpoints"][item["arch"]] = {"error": traceback.format_exc()}
    results["kernels"] = bundled_kernels()
    with open(result_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
