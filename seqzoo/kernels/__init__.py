"""seqzoo kernels: plain functions behind a registry (see ``registry.py`` for the selection rules).

Importing this package declares the built-in ops and backends; implementations that need optional dependencies
(Triton, third-party kernels) are only imported when first selected.
"""

from seqzoo.kernels.registry import (
    KernelError,
    available_backends,
    dispatch,
    get_kernel,
    list_kernels,
    list_ops,
    register_backend,
    register_op,
    requested_backend,
    select,
    set_backend,
    use_backend,
)

# Built-in op packages: importing each registers its backends.
from seqzoo.kernels import rnn_cells, causal_conv1d, selective_scan, ssd, wkv7  # noqa: E402,F401

__all__ = [
    "KernelError",
    "available_backends",
    "dispatch",
    "get_kernel",
    "list_kernels",
    "list_ops",
    "register_backend",
    "register_op",
    "requested_backend",
    "select",
    "set_backend",
    "use_backend",
]
