"""seqzoo kernels: plain functions behind a registry (see ``registry.py`` for the selection rules).

Each op is a package (``rnn_cells``, ``causal_conv1d``, ``selective_scan``, ``ssd``, ``wkv7``) that declares its
backends when imported. The layers import the op packages they use, so a Hub bundle carries only the kernels of its
architecture; listing the ops (``seqzoo kernels``) imports every built-in one. Implementations that need optional
dependencies (Triton, third-party kernels) are only imported when first selected.
"""

from seqzoo.kernels.registry import (
    KernelError,
    available_backends,
    check_environment,
    dispatch,
    get_kernel,
    list_kernels,
    list_ops,
    refresh,
    register_backend,
    register_op,
    requested_backend,
    select,
    set_backend,
    unregister_backend,
    use_backend,
)

__all__ = [
    "KernelError",
    "available_backends",
    "check_environment",
    "dispatch",
    "get_kernel",
    "list_kernels",
    "list_ops",
    "refresh",
    "register_backend",
    "register_op",
    "requested_backend",
    "select",
    "set_backend",
    "unregister_backend",
    "use_backend",
]
