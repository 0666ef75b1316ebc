"""Convert an RWKV-LM RWKV-7 "x070" ``.pth`` checkpoint into a seqzoo RWKV-7 model folder.

    python conversions/convert_rwkv7_pth.py RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth rwkv7-0.1b \
        --set bos_token_id=0 eos_token_id=0 [--dtype bfloat16]

The same as ``seqzoo convert rwkv7 ...``; the logic lives in the package (``seqzoo.conversions.rwkv7``) so that
installed users have it too. From Python: ``from conversions.convert_rwkv7_pth import convert_rwkv7``.
"""

from __future__ import annotations

import sys

from seqzoo.conversions.rwkv7 import (  # noqa: F401  (re-exported)
    config_from_state_dict,
    convert_rwkv7,
    convert_rwkv7_file,
    convert_state_dict,
)


def main(argv: list[str] | None = None) -> int:
    from seqzoo.cli import main as seqzoo_main

    return seqzoo_main(["convert", "rwkv7", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
