"""Run by tests/test_deprecations.py in a fresh process: forward, generate, save, load and publish a tiny model of
every family, and write every deprecation notice raised on the way to a JSON file.

    python deprecation_probe.py RESULT.json

transformers announces deprecations two ways: as ``FutureWarning`` / ``DeprecationWarning`` (``deprecate_kwarg``) and
through its logger (``logger.warning_once``, e.g. the 5.24 cache rename). A fresh process matters: ``warning_once``
speaks once per process.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Python puts this script's folder (tests/) first on the path, where tests/kernels would stand in for the
# `kernels` package that transformers 5.25 imports: the repository root goes there instead.
sys.path[:] = [str(HERE.parent), *(p for p in sys.path if Path(p or ".").resolve() != HERE)]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.notices: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecat" in message.lower():
            self.notices.append({"kind": "log", "logger": record.name, "message": message,
                                 "where": _seqzoo_frames()})


def _seqzoo_frames() -> list[str]:
    return [f"{frame.filename}:{frame.lineno}" for frame in traceback.extract_stack()
            if "/seqzoo/" in frame.filename or "/tests/" in frame.filename][-4:]


def exercise(preset: str, work: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from seqzoo.hub import export_folder
    from seqzoo.models.compat import output_cache
    from seqzoo.tokenizer import byte_tokenizer
    from tests.conftest import tiny_model

    model = tiny_model(preset, vocab_size=258, pad_token_id=256, bos_token_id=257, eos_token_id=257)
    ids = torch.tensor([[5, 17, 33, 8, 61], [256, 256, 9, 3, 77]])
    mask = (ids != 256).long()
    out = model(ids, attention_mask=mask, use_cache=True)
    model(ids[:, -1:], attention_mask=torch.cat([mask, mask[:, -1:]], 1), cache=output_cache(out))
    kwargs = dict(attention_mask=mask, max_new_tokens=3, pad_token_id=256)
    model.generate(ids, do_sample=False, **kwargs)
    model.generate(ids, num_beams=2, num_return_sequences=2, **kwargs)
    prefix = output_cache(model(ids[:, :3], attention_mask=mask[:, :3], use_cache=True))
    model.generate(ids, cache=prefix, **kwargs)
    folder = work / preset
    model.save_pretrained(folder / "saved")
    byte_tokenizer().save_pretrained(folder / "saved")
    AutoModelForCausalLM.from_pretrained(folder / "saved")(ids)
    export_folder(folder / "saved", folder / "export", repo_id=f"seqzoo-test/{preset}")


def main() -> None:
    result_path = sys.argv[1]
    collect = Collect()
    logging.getLogger("transformers").addHandler(collect)
    logging.getLogger("seqzoo").addHandler(collect)
    failures = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from tests.conftest import FAMILIES

        with tempfile.TemporaryDirectory() as work:
            for family, preset in FAMILIES.items():
                try:
                    exercise(preset, Path(work))
                except Exception:
                    failures[family] = traceback.format_exc()
    notices = collect.notices + [
        {"kind": w.category.__name__, "message": str(w.message), "where": [f"{w.filename}:{w.lineno}"]}
        for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))
    ]
    Path(result_path).write_text(json.dumps({"families": sorted(FAMILIES), "notices": notices,
                                             "failures": failures}, indent=2))


if __name__ == "__main__":
    main()
