"""Run by the Hub tests in a fresh process: load exported checkpoints through transformers' Auto classes and
record what they generate.

    python load_checkpoints.py JOB.json RESULT.json

JOB: {"hide_seqzoo": bool, "prompt": str, "new_tokens": int,
      "checkpoints": [{"arch": str, "sources": [folder or repo id, ...], "snippet": str, "cli_repo_id": str|null}]}

With ``hide_seqzoo`` seqzoo is made unimportable before anything else is imported, so only torch and transformers
(with ``trust_remote_code=True``) can load the checkpoints. Otherwise seqzoo is imported and they load natively.
A failure is recorded per checkpoint, with its traceback, so one broken architecture does not hide the others.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import io
import json
import sys
import traceback


class HideSeqzoo(importlib.abc.MetaPathFinder):
    """Placed first on sys.meta_path: whatever else is installed, `import seqzoo` fails as if it were not."""

    def find_spec(self, name, path=None, target=None):
        if name == "seqzoo" or name.startswith("seqzoo."):
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

    kwargs = {"trust_remote_code": True} if job["hide_seqzoo"] else {}
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    inputs = tokenizer(job["prompt"], return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**inputs, max_new_tokens=job["new_tokens"], do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
        logits = model(**inputs).logits
    cls = type(model)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "tokens": tokens[0].tolist(),
            "logits": logits[0].tolist()}


def printed_by(run) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        run()
    return buffer.getvalue()


def check(item: dict, job: dict) -> dict:
    result = {source: load_and_generate(source, job) for source in item["sources"]}
    code = compile(item["snippet"], "README.md usage snippet", "exec")
    result["snippet"] = printed_by(lambda: exec(code, {"__name__": "__main__"}))
    if item.get("cli_repo_id"):
        from seqzoo.cli import main

        args = ["generate", item["cli_repo_id"], job["prompt"], "--max-new-tokens", "20", "--no-stream"]
        result["cli"] = printed_by(lambda: main(args))
    return result


def main() -> None:
    job_path, result_path = sys.argv[1:3]
    with open(job_path) as f:
        job = json.load(f)
    if job["hide_seqzoo"]:
        sys.meta_path.insert(0, HideSeqzoo())
    results = {"seqzoo_importable": seqzoo_importable(), "checkpoints": {}}
    for item in job["checkpoints"]:
        try:
            results["checkpoints"][item["arch"]] = check(item, job)
        except Exception:
            results["checkpoints"][item["arch"]] = {"error": traceback.format_exc()}
    with open(result_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
