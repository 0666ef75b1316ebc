"""Fused Elman RNN / LSTM / GRU layers through torch's own kernels (cuDNN on GPU, oneDNN / ATen on CPU).

Same signature and semantics as ``reference.py``. Padding is handled exactly with packed sequences: each row's
valid tokens must form one contiguous block (left padding, right padding or both), which rows are shifted to the
front, packed, run, and shifted back. Masks with holes are declined in :func:`supports` (the reference backend
handles them). One token (a decode step) runs torch's fused cell (``torch.gru_cell`` ...), one call per layer;
:func:`step_layers` runs those calls for a whole stack of layers at once (a classic model's decode step).

torch's fused ops take no reset input, so rows with resets (several documents in a row) are re-packed: every
document becomes a sequence of its own in one packed batch (``PackedSequence``, no padded steps computed), each
starting from zero (a row's first document from the row's state unless it is reset too), and the outputs are
gathered back to their places; a row's final state is its last document's. Resets together with a padding mask are
declined (the reference takes both).
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqzoo.kernels.rnn_cells.reference import check_nonlinearity, check_positions, check_shapes

_OPS = {"tanh": torch.rnn_tanh, "relu": torch.rnn_relu, "lstm": torch.lstm, "gru": torch.gru}
# One token (decoding): the fused cell, one ATen call without the sequence kernel's set-up (what nn.GRUCell runs).
_CELLS = {"tanh": torch.rnn_tanh_cell, "relu": torch.rnn_relu_cell, "lstm": torch.lstm_cell, "gru": torch.gru_cell}
_ELMAN_ACTIVATIONS = {"tanh": torch.Tensor.tanh_, "relu": torch.Tensor.relu_}  # (in place, on a new tensor)


def padding_layout(mask):
    """Return None when no position is padded, else (starts, lengths) of each row's contiguous valid block.

    Raises ValueError if a row's valid positions are not contiguous.
    """
    if mask is None:
        return None
    valid = mask.to(torch.bool)
    if bool(valid.all()):
        return None
    lengths = valid.sum(dim=1)
    positions = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)
    first = torch.where(valid, positions, valid.shape[1]).amin(dim=1)
    last = torch.where(valid, positions, -1).amax(dim=1)
    contiguous = (lengths == 0) | (last - first + 1 == lengths)
    if not bool(contiguous.all()):
        raise ValueError("attention_mask rows must have contiguous valid positions for the fused backend")
    return torch.where(lengths > 0, first, 0), lengths


def _plain(tensors) -> bool:
    # torch's fused kernels read a float weight's storage directly; a quantised weight is a tensor subclass (torchao's
    # Int8Tensor) that only its own operators understand. (A set's check: this runs on every decode step.)
    return _PLAIN_TYPES.issuperset(map(type, tensors))


_PLAIN_TYPES = frozenset({torch.Tensor, torch.nn.Parameter, type(None)})


def supports(x, *args, mask=None, reset=None, **kwargs):
    if not _plain(args):
        kinds = sorted({type(t).__name__ for t in args if t is not None} - {"Tensor", "Parameter"})
        return False, (f"weights of type {', '.join(kinds)} (quantised): torch's fused kernels take plain float "
                       "weights; the reference backend runs them through their own F.linear")
    if mask is None or mask.shape[-1] == 1:
        # One position per row is always contiguous: nothing to read (a decode step's mask, which a compiled
        # step's trace could not read without a guard on its values). A reset of one token zeroes the state before
        # the step, which a padded row then keeps, as in the reference.
        return True, ""
    if torch.compiler.is_compiling():
        # Packing rows needs their lengths as Python numbers, which a torch.compile trace cannot read without a
        # graph break (fullgraph: an error); the reference backend computes any mask with tensor operations.
        return False, "a padding mask of several positions inside a torch.compile trace (its layout is data)"
    try:
        layout = padding_layout(mask)
    except ValueError as err:
        return False, str(err)
    if reset is not None and layout is not None:
        return False, "takes a reset input only without padding (its documents are re-packed as sequences)"
    return True, ""


def supports_key(x, *args, mask=None, reset=None, **kwargs):
    """What :func:`supports` reads, for the registry's cache: the weights' types, whether a reset is given, and
    nothing of a missing mask or of one token's (every row is contiguous); a longer mask's holes cannot be
    summarised without reading it (None: not cached)."""
    if mask is not None and mask.shape[-1] > 1:
        return None
    return ("contiguous" if _plain(args) else "quantised"), reset is None or mask is None


def _hx(kind, hx):
    # The ATen LSTM takes a list of (1, B, H) states, the others a single tensor.
    return hx if kind == "lstm" else hx[0]


def _states(kind, result):
    # -> (output, [final states])
    return (result[0], list(result[1:])) if kind == "lstm" else (result[0], [result[1]])


def _step(kind, x, hx, params, mask):
    """One token: x (B, 1, I), hx a list of (1, B, H). A padded row outputs zeros and keeps its state, as a fully
    padded row of the sequence path does."""
    cell = _CELLS[kind]
    if kind == "lstm":
        new = list(cell(x[:, 0], (hx[0][0], hx[1][0]), *params))
    else:
        new = [cell(x[:, 0], hx[0][0], *params)]
    y = new[0]
    if mask is not None:
        keep = mask.to(torch.bool)  # (B, 1)
        new = [torch.where(keep, n, h[0]) for n, h in zip(new, hx)]
        y = torch.where(keep, y, torch.zeros_like(y))
    return y[:, None], [n[None] for n in new]


def step_layers(kind, x, hx, params, mask=None, input_gates=None):
    """One token through a stack of layers: ``kind``'s fused cell once per layer, with nothing between the calls.

    What a classic model's decode step runs when every layer would dispatch to this backend (see
    ``seqzoo.layers.recurrent.step_stack``, which decides): the per-layer cell calls of :func:`_step`, without the
    per-layer mixer, dispatch and padding work. x (B, 1, I); ``hx[i]`` layer i's states, a list of (B, H) (h, and c
    for the LSTM); ``params[i]`` its weights as :func:`_params` lists them. Returns y (B, 1, H) and each layer's new
    states. A padded row (``mask`` (B, 1) False) outputs zeros and keeps every layer's state, as :func:`_step` does
    layer by layer (its intermediate outputs are not zeroed: nothing of them is kept).

    ``input_gates`` (B, gates * H), when given, is layer 0's input projection ``x @ weight_ih.T + bias_ih`` already
    computed (a classic model looks it up by token: ``seqzoo.layers.recurrent.InputTable``); layer 0's cell then
    reads no ``weight_ih``. The cells add their two projections before anything else, so the projection goes in as
    the input bias of a cell given an empty input and an empty input weight (a (B, 0) by (0, gates * H) product).
    An Elman layer 0 then runs the cell's own two operations instead, ``act(linear(h, weight_hh, bias_hh) + gates)``:
    the same values, bit for bit (the cell adds the two projections, and adds nothing for the empty product), and
    10-20 µs a step sooner at 512 x 2 (BENCHMARKS.md, run AD)."""
    cell = _CELLS[kind]
    new = []
    if input_gates is None:
        y = x[:, 0]
    else:
        weight_hh, bias_hh = params[0][1], params[0][3] if len(params[0]) == 4 else None
        if kind in _ELMAN_ACTIVATIONS:
            y = _ELMAN_ACTIVATIONS[kind](torch.nn.functional.linear(hx[0][0], weight_hh, bias_hh).add_(input_gates))
            new.append([y])
        else:
            y = input_gates.new_empty(input_gates.shape[0], 0)
            params = [[input_gates.new_empty(input_gates.shape[1], 0), weight_hh, input_gates, bias_hh], *params[1:]]
    for states, weights in zip(hx[len(new):], params[len(new):]):
        if kind == "lstm":
            h, c = cell(y, (states[0], states[1]), *weights)
            new.append([h, c])
        else:
            h = cell(y, states[0], *weights)
            new.append([h])
        y = h
    if mask is not None:
        keep = mask.to(torch.bool)  # (B, 1)
        new = [[torch.where(keep, n, old) for n, old in zip(layer_new, layer_old)] for layer_new, layer_old in
               zip(new, hx)]
        y = torch.where(keep, y, torch.zeros_like(y))
    return y[:, None], new


def _run_documents(kind, x, hx, params, reset):
    """Rows holding several documents (``reset`` True at each one's first token): every document a sequence of
    its own in one packed batch. x (B, T, I); hx a list of (1, B, H). Returns y (B, T, H) and the final states."""
    batch, length = x.shape[:2]
    starts = reset.clone()
    starts[:, 0] = True
    flat = starts.reshape(-1)
    document = flat.long().cumsum(0) - 1  # (B*T,): the document of each token
    first = torch.arange(batch * length, device=x.device)[flat]  # (N,): each document's first token, flattened
    lengths = torch.bincount(document, minlength=first.shape[0])  # (N,)
    offset = torch.arange(batch * length, device=x.device) - first[document]  # (B*T,): index within its document
    row = torch.div(first, length, rounding_mode="floor")  # (N,): the row each document lies in
    # A row's first document carries the row's state on unless that token is reset too.
    carried = (first % length == 0) & ~reset.reshape(-1)[first]
    hx_docs = [torch.where(carried[None, :, None], h[:, row], 0.0) for h in hx]  # (1, N, H)
    longest = int(lengths.max())
    # (N, L): each document's tokens from the front; indices past a document's end are never read by the packed
    # sequence, so they are clamped rather than masked.
    tokens = (first[:, None] + torch.arange(longest, device=x.device)).clamp(max=batch * length - 1)
    x_docs = x.reshape(batch * length, -1)[tokens]  # (N, L, I)
    packed = pack_padded_sequence(x_docs, lengths.cpu(), batch_first=True, enforce_sorted=False)
    hx_sorted = [h.index_select(1, packed.sorted_indices) for h in hx_docs]
    has_biases = len(params) == 4
    result = _OPS[kind](packed.data, packed.batch_sizes, _hx(kind, hx_sorted), tuple(params), has_biases, 1, 0.0,
                        torch.is_grad_enabled(), False)
    y_data, state = _states(kind, result)
    y_docs, _ = pad_packed_sequence(packed._replace(data=y_data), batch_first=True, total_length=longest)
    y = y_docs[document, offset].view(batch, length, -1)
    last = document.view(batch, length)[:, -1]  # (B,): each row's last document
    state = [s.index_select(1, packed.unsorted_indices)[:, last] for s in state]
    return y, state


def _run(kind, x, hx, params, mask, reset=None):
    if x.shape[1] == 0:  # no tokens: no outputs and the states unchanged, as in the reference (torch's ops refuse it)
        return x.new_zeros(x.shape[0], 0, hx[0].shape[-1]), hx
    if reset is not None:
        if x.shape[1] > 1:
            return _run_documents(kind, x, hx, params, reset)
        hx = [torch.where(reset[None, :, 0, None], 0.0, h) for h in hx]
    if x.shape[1] == 1:
        return _step(kind, x, hx, params, mask)
    has_biases = len(params) == 4
    params = tuple(params)
    op = _OPS[kind]
    train = torch.is_grad_enabled()
    layout = padding_layout(mask)
    if layout is None:
        return _states(kind, op(x, _hx(kind, hx), params, has_biases, 1, 0.0, train, False, True))
    starts, lengths = layout
    T = x.shape[1]
    steps = torch.arange(T, device=x.device)
    # Rotate each row so its valid block starts at position 0 (right padding), which packing understands.
    to_front = (steps[None, :] + starts[:, None]) % T
    x_front = x.gather(1, to_front[..., None].expand_as(x))
    packed = pack_padded_sequence(x_front, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
    hx_sorted = [h.index_select(1, packed.sorted_indices) for h in hx]
    result = op(packed.data, packed.batch_sizes, _hx(kind, hx_sorted), params, has_biases, 1, 0.0, train, False)
    y_data, state = _states(kind, result)
    y_front, _ = pad_packed_sequence(packed._replace(data=y_data), batch_first=True, total_length=T)
    back = (steps[None, :] - starts[:, None]) % T
    y = y_front.gather(1, back[..., None].expand_as(y_front))
    state = [s.index_select(1, packed.unsorted_indices) for s in state]
    empty = lengths == 0
    if bool(empty.any()):  # a fully padded row: no output, state untouched
        y = y * (~empty)[:, None, None].to(y.dtype)
        state = [torch.where(empty[None, :, None], h, s) for h, s in zip(hx, state)]
    return y, state


def _params(weight_ih, weight_hh, bias_ih, bias_hh):
    # torch's fused kernels take both biases or neither: a missing one is zeros, which is what it means.
    if bias_ih is None and bias_hh is None:
        return [weight_ih, weight_hh]
    if bias_ih is None:
        bias_ih = torch.zeros_like(bias_hh)
    elif bias_hh is None:
        bias_hh = torch.zeros_like(bias_ih)
    return [weight_ih, weight_hh, bias_ih, bias_hh]


def _checked_reset(op, x, mask, reset):
    reset = check_positions(op, x, mask, reset)
    if reset is not None and x.shape[1] > 1 and padding_layout(mask) is not None:
        raise ValueError(f"{op}: the fused backend takes a reset only without padding; use the reference backend")
    return reset


def rnn(x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, nonlinearity="tanh", mask=None, reset=None):
    check_nonlinearity(nonlinearity)
    check_shapes("rnn", x, weight_ih, weight_hh, bias_ih, bias_hh, h0)
    reset = _checked_reset("rnn", x, mask, reset)
    y, (h,) = _run(nonlinearity, x, [h0[None]], _params(weight_ih, weight_hh, bias_ih, bias_hh), mask, reset)
    return y, h[0]


def lstm(x, h0, c0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, mask=None, reset=None):
    check_shapes("lstm", x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0)
    reset = _checked_reset("lstm", x, mask, reset)
    y, (h, c) = _run("lstm", x, [h0[None], c0[None]], _params(weight_ih, weight_hh, bias_ih, bias_hh), mask, reset)
    return y, (h[0], c[0])


def gru(x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, mask=None, reset=None):
    check_shapes("gru", x, weight_ih, weight_hh, bias_ih, bias_hh, h0)
    reset = _checked_reset("gru", x, mask, reset)
    y, (h,) = _run("gru", x, [h0[None]], _params(weight_ih, weight_hh, bias_ih, bias_hh), mask, reset)
    return y, h[0]
