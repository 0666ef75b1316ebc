"""Parity of the fused (torch) rnn/lstm/gru backends against the reference cell loops."""

from __future__ import annotations

import pytest
import torch

from seqzoo.kernels import get_kernel
from tests.kernels.tolerances import assert_close

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
B, I, H = 3, 11, 13


def make_inputs(op, length, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = 1.0 / H**0.5

    def rand(*shape):
        return (torch.rand(*shape, generator=g) * 2 - 1).to(dtype).requires_grad_()

    x = rand(B, length, I)
    states = [rand(B, H) for _ in range(2 if op == "lstm" else 1)]
    weights = [(torch.rand(GATES[op] * H, n, generator=g) * 2 - 1).mul(scale).to(dtype).requires_grad_()
               for n in (I, H)]
    biases = [rand(GATES[op] * H) for _ in range(2)]
    return x, states, weights + biases


def run(op, backend, x, states, params, mask=None, nonlinearity="tanh", reset=None):
    fn = get_kernel(op, backend)
    extra = {"nonlinearity": nonlinearity} if op == "rnn" else {}
    y, final = fn(x, *states, *params, mask=mask, reset=reset, **extra)
    finals = list(final) if isinstance(final, tuple) else [final]
    return y, finals


def masks(length):
    left = torch.ones(B, length, dtype=torch.bool)
    left[0, : length // 2] = False  # left padding
    left[2, length - length // 3:] = False  # right padding
    return [None, left]


@pytest.mark.parametrize("op,nonlinearity", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("gru", None)])
@pytest.mark.parametrize("length", [1, 63, 500])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_matches_reference(op, nonlinearity, length, dtype):
    if dtype == torch.bfloat16 and length == 500:
        pytest.skip("bf16 error grows with length through the recurrence; 63 steps bound it")
    for mask in masks(length):
        inputs = make_inputs(op, length, dtype)
        ref_inputs = [t.detach().float().requires_grad_() for t in [inputs[0], *inputs[1], *inputs[2]]]
        ref_x, ref_states, ref_params = ref_inputs[0], ref_inputs[1:1 + len(inputs[1])], ref_inputs[1 + len(inputs[1]):]
        kwargs = {"nonlinearity": nonlinearity} if nonlinearity else {}
        y, finals = run(op, "torch", inputs[0], inputs[1], inputs[2], mask, **kwargs)
        ry, rfinals = run(op, "reference", ref_x, ref_states, ref_params, mask, **kwargs)
        assert_close(y, ry, dtype, "output", op)
        for f, rf in zip(finals, rfinals):
            assert_close(f, rf, dtype, "state", op)
        loss = y.float().pow(2).sum() + sum(f.float().sum() for f in finals)
        rloss = ry.pow(2).sum() + sum(f.sum() for f in rfinals)
        loss.backward()
        rloss.backward()
        tensors = [inputs[0], *inputs[1], *inputs[2]]
        for t, rt in zip(tensors, ref_inputs):
            if dtype == torch.bfloat16:
                # Weight gradients sum B*T bf16 products, so single entries near zero carry large relative error;
                # the bound is on the whole gradient's relative error instead.
                error = (t.grad.float() - rt.grad).norm() / rt.grad.norm().clamp(min=1e-6)
                assert error < 5e-2, f"{op} bf16 grad relative error {error:.3g} for shape {tuple(t.shape)}"
            else:
                assert_close(t.grad, rt.grad, dtype, "grad", op)


@pytest.mark.parametrize("op", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_padding_leaves_state_untouched(op, backend):
    x, states, params = make_inputs(op, 9, torch.float64)
    mask = torch.ones(B, 9, dtype=torch.bool)
    mask[:, :4] = False
    y, finals = run(op, backend, x, states, params, mask)
    alone_y, alone_finals = run(op, backend, x[:, 4:], states, params)
    torch.testing.assert_close(y[:, 4:], alone_y)
    assert torch.equal(y[:, :4], torch.zeros_like(y[:, :4]))
    for f, a in zip(finals, alone_finals):
        torch.testing.assert_close(f, a)
    fully_padded = torch.zeros(B, 9, dtype=torch.bool)
    _, finals = run(op, backend, x, states, params, fully_padded)
    for f, s in zip(finals, states):
        assert torch.equal(f, s)


@pytest.mark.parametrize("op,nonlinearity", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("gru", None)])
def test_one_token_with_a_padded_row_matches_reference(op, nonlinearity):
    # A decode step runs torch's fused cell; a padded row outputs zeros and keeps its state, as in the reference.
    x, states, params = make_inputs(op, 1, torch.float64, seed=4)
    mask = torch.tensor([[True], [False], [True]])
    extra = {"nonlinearity": nonlinearity} if op == "rnn" else {}
    y, finals = run(op, "torch", x, states, params, mask, **extra)
    ref_y, ref_finals = run(op, "reference", x, states, params, mask, **extra)
    torch.testing.assert_close(y, ref_y)
    assert torch.equal(y[1], torch.zeros_like(y[1]))
    for f, r, s in zip(finals, ref_finals, states):
        torch.testing.assert_close(f, r)
        assert torch.equal(f[1], s[1])
        assert not torch.equal(f[0], s[0])


def test_fused_declines_masks_with_holes_and_reference_handles_them():
    from seqzoo.kernels import select

    x, states, params = make_inputs("gru", 6, torch.float64)
    holes = torch.tensor([[1, 0, 1, 1, 0, 1]] * B, dtype=torch.bool)
    assert select("gru", x, *states, *params, mask=holes).name == "reference"
    assert select("gru", x, *states, *params, mask=None).name == "torch"
    y, (h,) = run("gru", "reference", x, states, params, holes)
    compact = x[:, holes[0]]
    _, (h_alone,) = run("gru", "reference", compact, states, params)
    torch.testing.assert_close(h, h_alone)


def test_continuation_from_final_state_is_exact():
    x, states, params = make_inputs("lstm", 20, torch.float64)
    for backend in ("torch", "reference"):
        y, finals = run("lstm", backend, x, states, params)
        y1, mid = run("lstm", backend, x[:, :7], states, params)
        y2, finals2 = run("lstm", backend, x[:, 7:], mid, params)
        torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=0, atol=1e-12)
        for a, b in zip(finals, finals2):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# Row 0's first document continues the row's state; the other rows reset at their first token. Documents of one
# token, also last in a row, where the final state is that document's.
DOCUMENTS = [[1, 6, 10], [17], [4, 1, 11, 1]]
TORCH_MODULES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def torch_module(op, params, nonlinearity):
    """torch.nn's own layer holding copies of the kernel's weights (a peer seqzoo did not write)."""
    extra = {"nonlinearity": nonlinearity} if op == "rnn" else {}
    module = TORCH_MODULES[op](I, H, batch_first=True, **extra).double()
    with torch.no_grad():
        for name, p in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), params):
            getattr(module, name).copy_(p)
    return module


@pytest.mark.parametrize("op,nonlinearity", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("gru", None)])
@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("carried", ["row 0", "every row"])
def test_resets_match_torch_nn_on_each_document(op, nonlinearity, backend, carried):
    """``carried``: whose first document continues the row's own initial state (no reset at token 0): row 0's only,
    or every row's (the fused backend re-packs documents across rows; each must start from its own row's state)."""
    from tests.kernels.scan_checks import reset_from_documents

    x, states, params = make_inputs(op, 17, torch.float64)
    reset = reset_from_documents(DOCUMENTS, 17)
    if carried == "every row":
        reset[:, 0] = False
    extra = {"nonlinearity": nonlinearity} if nonlinearity else {}
    y, finals = run(op, backend, x, states, params, reset=reset, **extra)
    module = torch_module(op, params, nonlinearity)
    x_alone = x.detach().clone().requires_grad_()
    states_alone = [s.detach().clone().requires_grad_() for s in states]
    outputs, last_states = [], []
    for row, lengths in enumerate(DOCUMENTS):
        start, pieces = 0, []
        for index, size in enumerate(lengths):
            continues = index == 0 and (row == 0 or carried == "every row")
            start_states = [s[row:row + 1] if continues else torch.zeros_like(s[row:row + 1]) for s in states_alone]
            hx = tuple(c[None] for c in start_states) if op == "lstm" else start_states[0][None]
            piece, final = module(x_alone[row:row + 1, start:start + size], hx)
            pieces.append(piece)
            start += size
        outputs.append(torch.cat(pieces, dim=1))
        last_states.append([f[0] for f in (final if op == "lstm" else (final,))])
    want_y = torch.cat(outputs)
    want_finals = [torch.cat(parts) for parts in zip(*last_states)]
    torch.testing.assert_close(y, want_y)
    for f, w in zip(finals, want_finals):
        torch.testing.assert_close(f, w)
    weights = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ((y * weights).sum() + sum(f.sum() for f in finals)).backward()
    ((want_y * weights).sum() + sum(f.sum() for f in want_finals)).backward()
    torch.testing.assert_close(x.grad, x_alone.grad)
    for s, s_alone in zip(states, states_alone):
        torch.testing.assert_close(s.grad, s_alone.grad)
    for p, name in zip(params, ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")):
        torch.testing.assert_close(p.grad, getattr(module, name).grad)


@pytest.mark.parametrize("op", ["lstm", "gru"])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_reset_of_one_token(op, backend):
    x, states, params = make_inputs(op, 1, torch.float64)
    reset = torch.tensor([[False], [True], [True]])
    y, finals = run(op, backend, x, states, params, reset=reset)
    zeroed = [torch.where(reset[:, :1], 0.0, s) for s in states]
    want_y, want_finals = run(op, "reference", x, zeroed, params)
    torch.testing.assert_close(y, want_y)
    for f, w in zip(finals, want_finals):
        torch.testing.assert_close(f, w)


def test_fused_declines_a_reset_with_padding():
    from seqzoo.kernels import select

    x, states, params = make_inputs("lstm", 6, torch.float64)
    reset = torch.zeros(B, 6, dtype=torch.bool)
    padded = torch.ones(B, 6, dtype=torch.bool)
    padded[0, :2] = False
    assert select("lstm", x, *states, *params, reset=reset).name == "torch"
    assert select("lstm", x, *states, *params, mask=padded, reset=reset).name == "reference"
    with pytest.raises(ValueError, match="reset only without padding"):
        run("lstm", "torch", x, states, params, padded, reset=reset)


@pytest.mark.parametrize("op", ["rnn", "lstm", "gru"])
def test_one_token_reset_with_a_padded_row_is_selected_and_run_like_the_reference(op):
    # A cached choice for a one-token reset without padding used to be reused for one with padding, which the
    # fused backend then refused (ValueError) instead of running it.
    from seqzoo.kernels import dispatch, refresh

    refresh()
    x, states, params = make_inputs(op, 1, torch.float64)
    reset = torch.tensor([[True], [False], [True]])
    padded = torch.tensor([[True], [False], [False]])
    dispatch(op, x, *states, *params, mask=torch.ones(B, 1, dtype=torch.bool), reset=reset)  # fills the cache
    y, final = dispatch(op, x, *states, *params, mask=padded, reset=reset)
    want_y, want_finals = run(op, "reference", x, states, params, padded, reset=reset)
    torch.testing.assert_close(y, want_y)
    for f, w in zip(list(final) if isinstance(final, tuple) else [final], want_finals):
        torch.testing.assert_close(f, w)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_no_tokens_and_a_mask_of_the_wrong_shape(backend):
    x, states, params = make_inputs("gru", 0, torch.float64)
    y, (h,) = run("gru", backend, x, states, params)
    assert y.shape == (B, 0, H) and torch.equal(h, states[0])
    x, states, params = make_inputs("gru", 5, torch.float64)
    with pytest.raises(ValueError, match=r"mask must be \(B, T\) = \(3, 5\), got shape \(3, 4\)"):
        run("gru", backend, x, states, params, torch.ones(B, 4, dtype=torch.bool))


@pytest.mark.parametrize("op", ["rnn", "lstm", "gru"])
def test_both_backends_read_any_nonzero_mask_value_as_a_token(op):
    """The reference scaled its outputs by a float mask's value (0.5 halved them) while keeping the state as for a
    token; the fused backend reads the mask as bool. Both now do."""
    x, states, params = make_inputs(op, 4, torch.float64)
    mask = torch.ones(B, 4, dtype=torch.float64)
    mask[0, :2] = torch.tensor([0.0, 0.5])
    got = [run(op, backend, x, states, params, mask) for backend in ("reference", "torch")]
    torch.testing.assert_close(got[0][0], got[1][0])
    torch.testing.assert_close(got[0][0], run(op, "reference", x, states, params, mask.bool())[0])


@pytest.mark.parametrize("op,nonlinearity", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("gru", None)])
@pytest.mark.parametrize("length", [1, 2, 9])
@pytest.mark.parametrize("case", ["no biases", "non-contiguous"])
def test_fused_matches_reference_in_float64(op, nonlinearity, length, case):
    """No biases, and inputs, states and weights in a non-contiguous layout; a fully padded row beside a row padded
    on both sides (from three tokens) and an unpadded one: outputs, final states and the gradients of x, every
    initial state and every weight, float64."""
    from tests.kernels.scan_checks import non_contiguous

    x, states, params = make_inputs(op, length, torch.float64, seed=2)
    if case == "no biases":
        params = params[:2]
    prepare = non_contiguous if case == "non-contiguous" else (lambda t: t)
    mask = torch.ones(B, length, dtype=torch.bool)
    mask[1] = False
    if length > 2:
        mask[0, 0] = mask[0, -1] = False
    extra = {"nonlinearity": nonlinearity} if nonlinearity else {}
    results = []
    for backend in ("torch", "reference"):
        tensors = [t.detach().clone().requires_grad_() for t in [x, *states, *params]]
        given = [prepare(t) for t in tensors]
        y, finals = run(op, backend, given[0], given[1:1 + len(states)], given[1 + len(states):], mask, **extra)
        g = torch.Generator().manual_seed(3)
        loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
        loss = loss + sum((f * torch.randn(f.shape, generator=g, dtype=f.dtype)).sum() for f in finals)
        loss.backward()
        results.append((y, finals, [t.grad for t in tensors]))
    (y, finals, grads), (ref_y, ref_finals, ref_grads) = results
    assert_close(y, ref_y, torch.float64, "output", f"{op} {case}")
    assert len(finals) == len(ref_finals)
    for f, rf in zip(finals, ref_finals):
        assert_close(f, rf, torch.float64, "state", f"{op} {case}")
    assert len(grads) == 1 + len(states) + len(params)
    for index, (grad, ref_grad) in enumerate(zip(grads, ref_grads)):
        assert grad is not None and ref_grad is not None, index
        assert_close(grad, ref_grad, torch.float64, "grad", f"{op} {case} input {index}")


@pytest.mark.parametrize("op", ["rnn", "lstm", "gru"])
def test_one_bias_runs_on_the_fused_backend_as_on_the_reference(op):
    """torch's fused kernels take both biases or neither: the fused backend accepted a call with one and then
    raised. A missing bias is zeros, which it now passes."""
    from seqzoo.kernels.registry import get_kernel, select

    torch.manual_seed(0)
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[op]
    x, h = torch.randn(2, 5, 4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    states = (h, torch.randn(2, 3, dtype=torch.float64)) if op == "lstm" else (h,)
    w_ih = torch.randn(gates * 3, 4, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(gates * 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(gates * 3, dtype=torch.float64, requires_grad=True)
    for biases in ((bias, None), (None, bias)):
        assert select(op, x, *states, w_ih, w_hh, *biases).name == "torch"
        results = []
        for backend in ("torch", "reference"):
            y, final = get_kernel(op, backend)(x, *states, w_ih, w_hh, *biases)
            final = final if isinstance(final, tuple) else (final,)
            grads = torch.autograd.grad((y.sum() + sum(f.sum() for f in final)), (w_ih, w_hh, bias))
            results.append((y, final, grads))
        torch.testing.assert_close(results[0], results[1])


def _kernels_refused(monkeypatch):
    # torch's fused sequence ops do not check the state's shape: the LSTM's corrupted the heap (`free(): invalid next
    # size`, the process gone). Here they fail the test instead, so the check must come before them.
    from seqzoo.kernels.rnn_cells import fused

    def kernel(*args, **kwargs):
        raise AssertionError("torch's kernel was called with a state of the wrong shape")

    for table in (fused._OPS, fused._CELLS):
        for kind in table:
            monkeypatch.setitem(table, kind, kernel)


BAD_STATES = {"batch": (B + 1, H), "batch of one": (1, H), "width": (B, H + 2), "layers": (1, B, H)}


@pytest.mark.parametrize("op", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("length", [1, 5])
@pytest.mark.parametrize("bad", sorted(BAD_STATES))
def test_a_state_of_the_wrong_shape_is_refused_before_the_kernel(monkeypatch, op, backend, length, bad):
    _kernels_refused(monkeypatch)
    x, states, params = make_inputs(op, length, torch.float32)
    for which in range(len(states)):  # h0, and c0 alone for the LSTM
        wrong = list(states)
        wrong[which] = torch.zeros(BAD_STATES[bad])
        name = ("h0", "c0")[which]
        expected = rf"{op}: the initial state {name} has shape \({', '.join(map(str, BAD_STATES[bad]))}\); " \
                   rf"expected \({B}, {H}\)"
        with pytest.raises(ValueError, match=expected):
            run(op, backend, x, wrong, params)


@pytest.mark.parametrize("op", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("length", [1, 5])
@pytest.mark.parametrize("width", ["narrower", "wider", "no time axis"])
def test_an_input_of_another_width_is_refused_before_the_kernel(monkeypatch, op, backend, length, width):
    # torch's fused LSTM over a sequence (CPU) took an input of another width without an error and returned garbage
    # (a wider one's non-finite, different on every call); the other ops raised torch's errors, naming no argument.
    _kernels_refused(monkeypatch)
    x, states, params = make_inputs(op, length, torch.float32)
    columns = params[0].shape[1]
    bad = {"narrower": x[..., :-3], "wider": torch.cat([x, x[..., :5]], dim=-1), "no time axis": x[:, 0]}[width]
    expected = (rf"{op}: the input has shape \({', '.join(map(str, bad.shape))}\); expected \(batch, length, "
                rf"{columns}\): the layer's weight_ih \({params[0].shape[0]}, {columns}\) takes inputs of width "
                rf"{columns}")
    with pytest.raises(ValueError, match=expected):
        run(op, backend, bad, states, params)


def bad_weights(op):
    """(argument, bad tensor, the message's expected part) for weights and biases not in torch.nn's layout of op."""
    rows = GATES[op] * H
    other = {"rnn": 2, "lstm": 3, "gru": 4}[op]  # another op's gate count (the LSTM: a GRU's weight_ih)
    return [
        (0, torch.zeros(other * H, I), rf"weight_ih has shape \({other * H}, {I}\); expected \({rows}, input_size\)"),
        (0, torch.zeros(rows + 1, I), rf"weight_ih has shape \({rows + 1}, {I}\); expected \({rows}, input_size\)"),
        (0, torch.zeros(rows * I), rf"weight_ih has shape \({rows * I},\); expected \({rows}, input_size\)"),
        (1, torch.zeros(rows + 4, H), rf"weight_hh has shape \({rows + 4}, {H}\); expected \({GATES[op]} \* "
                                      rf"hidden_size, hidden_size\) = \({rows}, {H}\)"),
        (1, torch.zeros(rows, H + 2), rf"weight_hh has shape \({rows}, {H + 2}\); expected \({GATES[op]} \* "
                                      rf"hidden_size, hidden_size\) = \({GATES[op] * (H + 2)}, {H + 2}\)"),
        (1, torch.zeros(rows, H, 1), rf"weight_hh has shape \({rows}, {H}, 1\); expected \({GATES[op]} \* "
                                     r"hidden_size, hidden_size\):"),
        (2, torch.zeros(rows - 3), rf"bias_ih has shape \({rows - 3},\); expected \({rows},\)"),
        (3, torch.zeros(rows + 8), rf"bias_hh has shape \({rows + 8},\); expected \({rows},\)"),
        (3, torch.zeros(1, rows), rf"bias_hh has shape \(1, {rows}\); expected \({rows},\)"),
    ]


@pytest.mark.parametrize("op", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("backend", ["torch", "reference", None])
@pytest.mark.parametrize("length", [1, 5])
@pytest.mark.parametrize("padded", [False, True])
def test_weights_of_another_layout_are_refused_before_the_kernel(monkeypatch, op, backend, length, padded):
    """Every weight and bias is checked against torch.nn's layout for the op (G = 1, 4, 3 gate blocks of hidden_size
    rows): torch's fused LSTM over a sequence ran a weight_ih of a GRU's 3 * H rows, or a weight_hh of 4 * H + 4,
    without an error, reading memory it does not own (nan, or values that changed from call to call); the other
    ops and the reference failed with torch's broadcast errors, naming no argument. ``None``: through dispatch."""
    from seqzoo.kernels import dispatch

    _kernels_refused(monkeypatch)
    x, states, params = make_inputs(op, length, torch.float32)
    mask = None
    if padded and length > 1:
        mask = torch.ones(B, length, dtype=torch.bool)
        mask[0, :2] = False
    for index, bad, expected in bad_weights(op):
        wrong = list(params)
        wrong[index] = bad
        with pytest.raises(ValueError, match=rf"^{op}: {expected}"):
            if backend is None:
                dispatch(op, x, *states, *wrong, mask=mask)
            else:
                run(op, backend, x, states, wrong, mask=mask)


def test_torch_nn_weights_pass_the_layout_check():
    # The layout the check expects is torch.nn's own: its modules' parameters run on both backends.
    for op, module in (("rnn", torch.nn.RNN(I, H, batch_first=True)), ("lstm", torch.nn.LSTM(I, H, batch_first=True)),
                       ("gru", torch.nn.GRU(I, H, batch_first=True))):
        x = torch.randn(B, 4, I)
        states = [torch.zeros(B, H)] * (2 if op == "lstm" else 1)
        params = [module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0]
        want, _ = module(x)
        for backend in ("torch", "reference"):
            y, _ = run(op, backend, x, states, params)
            torch.testing.assert_close(y, want)


@pytest.mark.parametrize("backend", ["torch", "reference", None])
@pytest.mark.parametrize("nonlinearity", ["sigmoid", "Tanh", None])
def test_an_unknown_nonlinearity_is_refused_by_name(backend, nonlinearity):
    """Both backends looked the nonlinearity up in a dict: KeyError: 'sigmoid', naming nothing allowed."""
    from seqzoo.kernels import dispatch

    x, states, params = make_inputs("rnn", 5, torch.float32)
    expected = rf"rnn: unknown nonlinearity {nonlinearity!r}; the Elman RNN takes 'tanh' or 'relu'"
    with pytest.raises(ValueError, match=expected):
        if backend is None:
            dispatch("rnn", x, *states, *params, nonlinearity=nonlinearity)
        else:
            run("rnn", backend, x, states, params, nonlinearity=nonlinearity)


@pytest.mark.parametrize("mixer_type", ["rnn", "lstm", "gru"])
def test_a_mixer_called_with_a_state_of_the_wrong_shape_raises(monkeypatch, mixer_type):
    # The mixers are public API: a state of another batch size reached torch's unchecked kernel.
    from seqzoo.layers.recurrent import RECURRENT_MIXERS
    from tests.conftest import tiny_config

    _kernels_refused(monkeypatch)
    mixer_class = RECURRENT_MIXERS[mixer_type]
    mixer = mixer_class(tiny_config(f"{mixer_type}-tiny"), 0)
    x = torch.randn(2, 5, mixer.input_size)
    state = {name: torch.zeros(3, mixer.hidden_size) for name in mixer_class.state_names}
    with pytest.raises(ValueError, match=rf"initial state h0 has shape \(3, {mixer.hidden_size}\); expected "
                                         rf"\(2, {mixer.hidden_size}\)"):
        mixer(x, state=state)
