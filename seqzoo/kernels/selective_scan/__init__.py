"""Op ``selective_scan``: the Mamba-1 selective state-space scan over (B, T, Dm) with a (B, Dm, N) state."""

from seqzoo.kernels.registry import register_backend, register_op

from . import chunked, reference

register_op("selective_scan", "Mamba-1 selective scan (delta already softplus'ed); delta = 0 is an identity step",
            check=reference.check_call)
register_backend("selective_scan", "reference", reference.selective_scan, priority=0,
                 description="explicit per-token state update in PyTorch")
register_backend("selective_scan", "chunked", chunked.selective_scan, priority=10,
                 description="chunk-parallel three-pass scan in pure PyTorch, no per-token loop")

from seqzoo.kernels import triton_support  # noqa: E402  (no Triton import: availability and supports() only)

register_backend("selective_scan", "triton", "seqzoo.kernels.selective_scan.triton:selective_scan", priority=20,
                 devices=("cuda",), is_available=triton_support.triton_available,
                 unavailable_reason=triton_support.unavailable_reason,
                 supports=triton_support.supports_selective_scan,
                 cache_key=triton_support.supports_key_selective_scan,
                 description="Triton tile scan (forward, checkpointed reverse-time backward, fused decode step)")
