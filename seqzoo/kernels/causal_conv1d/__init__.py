"""Op ``causal_conv1d``: depthwise causal convolution over (B, T, D) with a carried (B, D, K-1) input history."""

from seqzoo.kernels.registry import register_backend, register_op

from . import chunked, reference

register_op("causal_conv1d", "depthwise causal conv1d with exact padding (masked positions are skipped)",
            check=reference.check_call)
register_backend("causal_conv1d", "reference", reference.causal_conv1d, priority=0,
                 description="explicit per-token window loop in PyTorch")
register_backend("causal_conv1d", "chunked", chunked.causal_conv1d, priority=10, supports=chunked.supports,
                 cache_key=chunked.supports_key,
                 description="K shifted multiply-adds over the (compacted) sequence")

from seqzoo.kernels import triton_support  # noqa: E402  (no Triton import: availability and supports() only)

register_backend("causal_conv1d", "triton", "seqzoo.kernels.causal_conv1d.triton:causal_conv1d", priority=20,
                 devices=("cuda",), is_available=triton_support.triton_available,
                 unavailable_reason=triton_support.unavailable_reason,
                 supports=triton_support.supports_causal_conv1d,
                 cache_key=triton_support.supports_key_causal_conv1d,
                 description="Triton forward/backward conv kernels; padding by compaction around the kernel")
