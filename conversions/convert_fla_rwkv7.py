"""Convert a flash-linear-attention RWKV7ForCausalLM folder into a seqzoo model folder.

    python conversions/convert_fla_rwkv7.py rwkv7-1.5B-world rwkv7-seqzoo --world-tokenizer

The same as ``seqzoo convert fla-rwkv7 ...``; the logic lives in the package (``seqzoo.conversions.fla_rwkv7``) so that
installed users have it too. From Python: ``from conversions.convert_fla_rwkv7 import convert_fla_rwkv7``.
"""

from __future__ import annotations

import sys

from seqzoo.conversions.fla_rwkv7 import convert_fla_rwkv7, convert_fla_rwkv7_folder  # noqa: F401  (re-exported)


def main(argv: list[str] | None = None) -> int:
    from seqzoo.cli import main as seqzoo_main

    return seqzoo_main(["convert", "fla-rwkv7", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
