"""Op ``wkv7``: the RWKV-7 (x070) generalized delta rule over (B, T, H, K) with a (B, H, V, K) state.

``wkv7_step`` is the single-token update for decoding (the reference's, bit for bit; the other backends agree with
it up to rounding at T == 1).
"""

from seqzoo.kernels.registry import register_backend, register_op

from . import chunked, reference
from .reference import wkv7_step

register_op("wkv7", "RWKV-7 x070 WKV (log decay w); w = k = b = 0 is an identity step", check=reference.check_call)
register_backend("wkv7", "reference", reference.wkv7, priority=0,
                 description="explicit per-token state update in PyTorch")
register_backend("wkv7", "chunked", chunked.wkv7, priority=10,
                 description="chunked generalized delta rule (triangular solve per chunk, loop over chunks)")

from seqzoo.kernels import triton_support  # noqa: E402  (no Triton import: availability and supports() only)

register_backend("wkv7", "triton", "seqzoo.kernels.wkv7.triton:wkv7", priority=20,
                 devices=("cuda",), is_available=triton_support.triton_available,
                 unavailable_reason=triton_support.unavailable_reason,
                 supports=triton_support.supports_wkv7,
                 cache_key=triton_support.supports_key_wkv7,
                 description="Triton fused recurrent WKV (state in registers; checkpointed backward; T=1 decode)")
register_backend("wkv7", "triton_chunked", "seqzoo.kernels.wkv7.triton_chunked:wkv7", priority=30,
                 devices=("cuda",), is_available=triton_support.triton_available,
                 unavailable_reason=triton_support.unavailable_reason,
                 supports=triton_support.supports_wkv7_chunked,
                 cache_key=triton_support.supports_key_wkv7,
                 description="Triton chunked WKV for training and prefill (tensor-core products per chunk of 32, "
                             "sequential pass over chunks only); T=1 runs the fused step")

__all__ = ["wkv7_step"]
