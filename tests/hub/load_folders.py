"""Run by tests/hub/test_saved_folders.py in a fresh process in which seqzoo cannot be imported: load saved model
folders with transformers' Auto classes and ``trust_remote_code=True``, and record their logits.

    python load_folders.py JOB.json RESULT.json

JOB: {"folders": [{"name": str, "folder": str, "auto_class": "AutoModelForCausalLM" | ..., "inputs": {name: ids}}]}
"""

from __future__ import annotations

import json
import sys
import traceback

from load_checkpoints import Hide, seqzoo_importable


def logits_of(item: dict) -> dict:
    import torch
    import transformers

    auto_class = getattr(transformers, item["auto_class"])
    model = auto_class.from_pretrained(item["folder"], trust_remote_code=True).eval()
    inputs = {name: torch.tensor(ids) for name, ids in item["inputs"].items()}
    with torch.no_grad():
        logits = model(**inputs).logits
    cls = type(model)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "logits": logits.tolist()}


def main() -> None:
    job_path, result_path = sys.argv[1:3]
    with open(job_path) as f:
        job = json.load(f)
    sys.meta_path.insert(0, Hide())
    results = {"seqzoo_importable": seqzoo_importable(), "folders": {}}
    for item in job["folders"]:
        try:
            results["folders"][item["name"]] = logits_of(item)
        except Exception:
            results["folders"][item["name"]] = {"error": traceback.format_exc()}
    with open(result_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
