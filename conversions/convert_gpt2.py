"""Convert a GPT2LMHeadModel folder or Hub id into a seqzoo model folder.

    python conversions/convert_gpt2.py gpt2-folder gpt2-seqzoo

The same as ``seqzoo convert gpt2 ...``; the logic lives in the package (``seqzoo.conversions.gpt2``) so that
installed users have it too. From Python: ``from conversions.convert_gpt2 import convert_gpt2``.
"""

from __future__ import annotations

import sys

from seqzoo.conversions.gpt2 import convert_gpt2, convert_gpt2_folder  # noqa: F401  (re-exported)


def main(argv: list[str] | None = None) -> int:
    from seqzoo.cli import main as seqzoo_main

    return seqzoo_main(["convert", "gpt2", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
