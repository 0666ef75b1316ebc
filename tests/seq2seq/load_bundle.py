"""Run by tests/seq2seq/test_hub.py in a fresh process in which seqzoo cannot be imported: load exported seq2seq
folders with torch and transformers alone (``trust_remote_code=True``) and record what they compute.

    python load_bundle.py JOB.json RESULT.json

JOB: {"sources": [[ids], ...], "target": [[ids], ...], "new_tokens": int,
      "checkpoints": {name: {"folder": path, "snippet": python code to run, optional}}}
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings

from tests.hub.load_checkpoints import Hide, printed_by, seqzoo_importable


def padded(sources: list[list[int]], pad: int):
    import torch

    width = max(map(len, sources))
    ids = torch.full((len(sources), width), pad)
    mask = torch.zeros_like(ids)
    for row, source in enumerate(sources):  # left padding, as the byte tokenizer pads
        ids[row, width - len(source):], mask[row, width - len(source):] = torch.tensor(source), 1
    return ids, mask


def check(item: dict, job: dict) -> dict:
    """Greedy and beam generations of the padded sources, logits and attention weights of the target; and, for
    bundled code (``item["probe"]``, default true), how it treats keywords it does not know."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(item["folder"], trust_remote_code=True).eval()
    ids, mask = padded(job["sources"], model.config.pad_token_id)
    target = torch.tensor(job["target"])
    kwargs = dict(attention_mask=mask, max_new_tokens=job["new_tokens"], do_sample=False,
                  pad_token_id=model.config.pad_token_id, eos_token_id=None)
    with torch.no_grad():
        greedy = model.generate(ids, **kwargs)
        beams = model.generate(ids, num_beams=3, **kwargs)
        out = model(ids, attention_mask=mask, decoder_input_ids=target, output_attentions=True)
    cls = type(model)
    result = {"class": f"{cls.__module__}.{cls.__qualname__}", "greedy": greedy.tolist(), "beams": beams.tolist(),
              "logits": out.logits.tolist(), "cross_attentions": [w.tolist() for w in out.cross_attentions or ()]}
    if item.get("probe", True):
        result["lenient"] = leniency(model, ids, mask, target)
    if item.get("snippet"):
        code = compile(item["snippet"], "README.md usage snippet", "exec")
        result["snippet"] = printed_by(lambda: exec(code, {"__name__": "__main__"}))
    return result


def leniency(model, ids, mask, target) -> dict:
    """A future transformers' new keyword only warns (same logits); a misspelling of a known one raises."""
    import torch

    with torch.no_grad():
        logits = model(ids, attention_mask=mask, decoder_input_ids=target).logits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            future = model(ids, attention_mask=mask, decoder_input_ids=target, a_future_generate_flag=True)
    try:
        model(ids, attention_mask=mask, decoder_input_ids=target, decoder_attention_mak=torch.ones_like(target))
        misspelling = "accepted"
    except TypeError as err:
        misspelling = str(err)
    return {"same_logits": torch.equal(future.logits, logits), "warnings": [str(w.message) for w in caught],
            "misspelling": misspelling}


def main() -> None:
    job_path, result_path = sys.argv[1:3]
    with open(job_path) as f:
        job = json.load(f)
    sys.meta_path.insert(0, Hide())
    import transformers

    results = {"seqzoo_importable": seqzoo_importable(), "transformers_version": transformers.__version__,
               "checkpoints": {}}
    for name, item in job["checkpoints"].items():
        try:
            results["checkpoints"][name] = check(item, job)
        except Exception:
            results["checkpoints"][name] = {"error": traceback.format_exc()}
    with open(result_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
