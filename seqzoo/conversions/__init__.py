"""Converters from peer checkpoints into seqzoo models, one module per source (``hf_mamba`` ...).

Each is importable from Python and reachable from the shell as ``seqzoo convert <source> ...`` (see ``cli.py``).
"""
