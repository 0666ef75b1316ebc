"""Convert a raw mamba_ssm checkpoint folder into a seqzoo model folder.

    python conversions/convert_mamba_ssm.py mamba-2.8b mamba-2.8b-seqzoo

The same as ``seqzoo convert mamba-ssm ...``; the logic lives in the package (``seqzoo.conversions.mamba_ssm``) so that
installed users have it too. From Python: ``from conversions.convert_mamba_ssm import convert_mamba_ssm``.
"""

from __future__ import annotations

import sys

from seqzoo.conversions.mamba_ssm import convert_mamba_ssm, convert_mamba_ssm_folder  # noqa: F401  (re-exported)


def main(argv: list[str] | None = None) -> int:
    from seqzoo.cli import main as seqzoo_main

    return seqzoo_main(["convert", "mamba-ssm", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
