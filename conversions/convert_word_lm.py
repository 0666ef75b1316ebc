"""Convert a PyTorch word-language-model state dict into a seqzoo model folder.

    python conversions/convert_word_lm.py model-state_dict.pt lstm-seqzoo --vocab vocab.txt

The same as ``seqzoo convert word-lm ...``; the logic lives in the package (``seqzoo.conversions.word_lm``) so that
installed users have it too. From Python: ``from conversions.convert_word_lm import convert_word_lm``.
"""

from __future__ import annotations

import sys

from seqzoo.conversions.word_lm import convert_word_lm, convert_word_lm_file  # noqa: F401  (re-exported)


def main(argv: list[str] | None = None) -> int:
    from seqzoo.cli import main as seqzoo_main

    return seqzoo_main(["convert", "word-lm", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
