"""One tolerance table for every kernel parity test: (atol, rtol) per dtype and per compared quantity.

Backends are compared with the same inputs; bf16 runs compare against the reference computed in float32 from the
same (rounded) inputs, so the bound covers only the backend's own rounding.

Scan kernels (causal_conv1d, selective_scan, ssd, wkv7): in bf16 *both* backends run on bf16 inputs and each is
checked against that float32 reference. The kernels accumulate in float32 and round only the outputs (and the
gradients of bf16 inputs) to bf16, so the bf16 rows bound one final rounding (2^-9 relative) plus float32 noise. The
loss weights are bf16-representable, so every run backpropagates the same output gradient. float64 rows are for
exactness checks (chunked vs reference, chunked continuation across pieces).
"""

import torch

TOLERANCES = {
    torch.float64: {"output": (1e-10, 1e-8), "state": (1e-10, 1e-8), "grad": (1e-9, 1e-7)},
    torch.float32: {"output": (2e-5, 1e-4), "state": (2e-5, 1e-4), "grad": (1e-4, 1e-3)},
    torch.bfloat16: {"output": (3e-2, 3e-2), "state": (3e-2, 3e-2), "grad": (6e-2, 6e-2)},
}


def assert_close(actual, expected, dtype, what, name="", override=None):
    atol, rtol = override or TOLERANCES[dtype][what]
    torch.testing.assert_close(
        actual.float(), expected.float(), atol=atol, rtol=rtol,
        msg=lambda m: f"{name} {what} mismatch ({dtype}): {m}",
    )
