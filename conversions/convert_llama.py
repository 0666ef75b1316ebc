"""Convert a LlamaForCausalLM (and Mistral / Qwen2) folder or Hub id into a seqzoo model folder.

    python conversions/convert_llama.py llama-folder llama-seqzoo

The same as ``seqzoo convert llama ...``; the logic lives in the package (``seqzoo.conversions.llama``) so that
installed users have it too. From Python: ``from conversions.convert_llama import convert_llama``.
"""

from __future__ import annotations

import sys

from seqzoo.conversions.llama import convert_llama, convert_llama_folder  # noqa: F401  (re-exported)


def main(argv: list[str] | None = None) -> int:
    from seqzoo.cli import main as seqzoo_main

    return seqzoo_main(["convert", "llama", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
