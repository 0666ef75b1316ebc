"""Op ``ssd``: the Mamba-2 state-space recurrence over (B, T, H, P) with a (B, H, P, N) state."""

from seqzoo.kernels.registry import register_backend, register_op

from . import chunked, reference

register_op("ssd", "Mamba-2 state-space duality scan (dt already softplus'ed); dt = 0 is an identity step",
            check=reference.check_call)
register_backend("ssd", "reference", reference.ssd, priority=0,
                 description="explicit per-token state update in PyTorch (chunk_size has no effect)")
register_backend("ssd", "chunked", chunked.ssd, priority=10,
                 description="SSD block decomposition: intra-chunk quadratic form + inter-chunk state passing")

from seqzoo.kernels import triton_support  # noqa: E402  (no Triton import: availability and supports() only)

register_backend("ssd", "triton", "seqzoo.kernels.ssd.triton:ssd", priority=20,
                 devices=("cuda",), is_available=triton_support.triton_available,
                 unavailable_reason=triton_support.unavailable_reason,
                 supports=triton_support.supports_ssd,
                 cache_key=triton_support.supports_key_ssd,
                 description="Triton chunked SSD (states, output, reverse state pass, chunk backward; fused decode)")
