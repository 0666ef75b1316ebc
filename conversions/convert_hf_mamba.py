"""Convert a transformers MambaForCausalLM / Mamba2ForCausalLM checkpoint into seqzoo Mamba / Mamba-2.

    python conversions/convert_hf_mamba.py <source folder or Hub id> <destination folder> [--dtype bfloat16]

The same as ``seqzoo convert hf-mamba ...``; the logic lives in the package (``seqzoo.conversions.hf_mamba``) so
that installed users have it too. From Python: ``from conversions.convert_hf_mamba import convert_hf_mamba``.
"""

from __future__ import annotations

import sys

from seqzoo.conversions.hf_mamba import (  # noqa: F401  (re-exported)
    config_from_hf,
    convert_hf_mamba,
    convert_hf_mamba_folder,
    convert_state_dict,
)


def main(argv: list[str] | None = None) -> int:
    from seqzoo.cli import main as seqzoo_main

    return seqzoo_main(["convert", "hf-mamba", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
