"""RWKV-7's one-token decode step, every block in TorchScript.

At decode sizes an RWKV-7 block costs more in Python than in arithmetic: about fifty small operations per time mix,
each paying the Python binding's dispatch. BlinkDL's ``rwkv`` package runs the same operations as TorchScript, whose
interpreter dispatches them for less. :func:`step_blocks` does the same for seqzoo's blocks: one call of a scripted
function for the whole stack, computing for each block exactly what ``RWKV7Block`` computes for a (B, 1) token
(``RWKV7TimeMix._step``, the channel mix, the two LayerNorms and residuals), with the WKV update by the ``chunked``
backend's own ``step``.

It applies only when that is what the blocks would run (otherwise it returns None and the blocks run one by one): every
block an unmodified ``RWKV7Block`` of unmodified parts (no subclass, nothing :func:`has_hooks` finds on any of its
modules, no global module hooks, no ``__call__`` of a class's own on any of them, the linear maps exactly ``nn.Linear``
without bias -- a peft or quantisation wrapper runs as a module), no forward replaced on any of their classes (a library
or a user patching ``RWKV7TimeMix.forward``, ``nn.Linear.forward`` ...) nor any torch function the Python path looks up
at each call (``F.linear``, ``torch.sigmoid`` ...: a profiler may count their calls), plain float32 CPU weights, no
autocast, no gradient recording, no ``TorchFunctionMode`` (TorchScript's interpreter runs below ``__torch_function__``),
not inside a ``torch.compile`` trace (``compile_decoding()`` traces the Python path), every cached state of the shape
the blocks keep (the step reshapes freely: a cache of another head layout must meet the blocks' own error), and the
kernel registry choosing the ``chunked`` backend for the step's ``wkv7`` call (a forced ``reference`` backend, or a
plugin's, is honoured). The parameters are read from the modules on every call: nothing is copied, so a weight changed
in place is seen. Its large matrix products run by oneDNN where that was measured faster
(``seqzoo/kernels/onednn_linear.py``, for as many rows as ``seqzoo/kernels/product_choice.py`` says;
``torch.backends.mkldnn.enabled = False`` turns it off).

A cache's plan of its later steps (``models/rwkv7/step_plan.py``) runs the same stack between the backbone's two
norms, in one scripted call (:func:`_normed_stack_step`).

The functions are scripted on first use. Where TorchScript cannot script it (a torch without it, sources not
shipped), a warning says so once and decoding runs the Python path.
"""

from __future__ import annotations

import logging
import operator
import warnings
from collections.abc import Sequence
from typing import Any, List, Optional, Tuple  # noqa: UP035 -- TorchScript reads these annotations

import torch
from torch import nn
from torch.nn import functional as F

from seqzoo.kernels import onednn_linear
from seqzoo.kernels import registry as kernel_registry
from seqzoo.kernels.onednn_linear import scripted_linear
from seqzoo.kernels.wkv7 import chunked
from seqzoo.layers.mixer import global_module_hooks, has_hooks, plain_module_call, torch_forward
from seqzoo.layers.rwkv7 import DECAY_LOG_SCALE, RWKV7ChannelMix, RWKV7TimeMix

logger = logging.getLogger(__name__)

# The order of the parameters handed to the scripted block (see _parameters).
_TIME_MIX = ("x_r", "x_k", "x_v", "x_w", "x_a", "x_g", "w0", "w1", "w2", "a0", "a1", "a2", "g1", "g2", "k_k", "k_a",
             "r_k")
_VALUE_RESIDUAL = ("v0", "v1", "v2")


def _block_step(
    x: torch.Tensor, p: List[torch.Tensor], shift: torch.Tensor, wkv: torch.Tensor, ffn_shift: torch.Tensor,
    v_first: Optional[torch.Tensor], mask: Optional[torch.Tensor], heads: int, norm_eps: float,
    ffn_norm_eps: float, group_norm_eps: float, decay_log_scale: float, onednn_rows: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One RWKV7Block on one token. x (B, C) the block's input; p its parameters in _parameters' order; shift,
    ffn_shift (B, C) and wkv (B, H, N, N) its state; v_first (B, C) layer 0's values (None in layer 0); mask (B, 1)
    bool or None; onednn_rows: the fewest rows the large matrix products run by oneDNN for (onednn_linear.rows_from():
    the gradient, autocast and F.linear conditions of onednn_linear.usable() step_blocks has checked). Returns the
    block's output, its new attn_shift, wkv and ffn_shift, and v_first."""
    (norm_w, norm_b, x_r, x_k, x_v, x_w, x_a, x_g, w0, w1, w2, a0, a1, a2, g1, g2, k_k, k_a, r_k, receptance, key,
     value, output, ln_x_w, ln_x_b, ffn_norm_w, ffn_norm_b, ffn_x_k, ffn_key, ffn_value) = p[:30]
    B, C = x.shape
    N = C // heads
    # The time mix (RWKV7TimeMix._step).
    xn = F.layer_norm(x, [C], norm_w, norm_b, norm_eps)
    new_shift = xn if mask is None else torch.where(mask, xn, shift)
    delta = shift - xn
    xr, xk, xv = torch.addcmul(xn, delta, x_r), torch.addcmul(xn, delta, x_k), torch.addcmul(xn, delta, x_v)
    xw, xa, xg = torch.addcmul(xn, delta, x_w), torch.addcmul(xn, delta, x_a), torch.addcmul(xn, delta, x_g)
    r = scripted_linear(xr, receptance, onednn_rows)
    k = scripted_linear(xk, key, onednn_rows)
    v = scripted_linear(xv, value, onednn_rows)
    if v_first is None:
        v_first = v
    else:
        v0, v1, v2 = p[30], p[31], p[32]
        v = torch.lerp(v, v_first, torch.sigmoid(torch.addmm(v0, torch.mm(xv, v1), v2)))
    a = torch.sigmoid(torch.addmm(a0, torch.mm(xa, a1), a2))
    g = torch.mm(torch.sigmoid(torch.mm(xg, g1)), g2)
    kk = k * k_k
    k = k * torch.addcmul(torch.rsub(k_a, 1), a, k_a)
    log_decay = torch.sigmoid(torch.addmm(w0, torch.tanh(torch.mm(xw, w1)), w2)) * -decay_log_scale
    kk = kk.view(B, heads, N)
    kk = kk / torch.linalg.vector_norm(kk, dim=-1, keepdim=True).clamp_min(1e-12)
    r_h, k_h, v_h = r.view(B, heads, N), k.view(B, heads, N), v.view(B, heads, N)
    b_h = kk * a.view(B, heads, N)
    log_decay = log_decay.view(B, heads, N)
    k_in, v_in, a_in = k_h, v_h, -kk
    if mask is not None:  # an identity step for a padded token (nothing of it reaches the state, NaN neither)
        keep = mask.view(B, 1, 1)
        log_decay = torch.where(keep, log_decay, 0.0)
        k_in = torch.where(keep, k_h, 0.0)
        b_h = torch.where(keep, b_h, 0.0)
        v_in = torch.where(keep, v_h, 0.0)
        a_in = torch.where(keep, a_in, 0.0)
    y, wkv = chunked.step(wkv, r_h, log_decay, k_in, v_in, a_in, b_h)
    y = F.group_norm(y.reshape(B, C), heads, ln_x_w, ln_x_b, group_norm_eps).view(B, heads, N)
    bonus = (r_h * k_h * r_k).sum(dim=-1).view(B, heads, 1)
    y = torch.addcmul(y, bonus, v_h).view(B, C)
    x = x + scripted_linear(y * g, output, onednn_rows)
    # The channel mix (RWKV7ChannelMix.forward).
    xn = F.layer_norm(x, [C], ffn_norm_w, ffn_norm_b, ffn_norm_eps)
    new_ffn_shift = xn if mask is None else torch.where(mask, xn, ffn_shift)
    mixed = torch.addcmul(xn, ffn_shift - xn, ffn_x_k)
    x = x + scripted_linear(torch.relu(scripted_linear(mixed, ffn_key, onednn_rows)).square(), ffn_value, onednn_rows)
    return x, new_shift, wkv, new_ffn_shift, v_first


def _stack_step(
    x: torch.Tensor, parameters: List[List[torch.Tensor]], shifts: List[torch.Tensor], wkvs: List[torch.Tensor],
    ffn_shifts: List[torch.Tensor], mask: Optional[torch.Tensor], heads: int, eps: List[List[float]],
    decay_log_scale: float, onednn_rows: int,
) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
    """Every block on one token, in one call: _block_step block after block, handing on layer 0's values. x (B, C)
    the first block's input; parameters[i], eps[i] (norm, ffn_norm, group_norm) and the i-th state of each list:
    block i's. Returns the last block's output and each block's new attn_shift, wkv and ffn_shift. (One call from
    Python for the whole stack, where a call per block cost about 60 µs more each at 256 channels: the interpreter's
    entry converts and checks every argument.)"""
    v_first: Optional[torch.Tensor] = None
    new_shifts: List[torch.Tensor] = []
    new_wkvs: List[torch.Tensor] = []
    new_ffn_shifts: List[torch.Tensor] = []
    for i in range(len(parameters)):
        block_eps = eps[i]
        x, shift, wkv, ffn_shift, v_first = _block_step(
            x, parameters[i], shifts[i], wkvs[i], ffn_shifts[i], v_first, mask, heads, block_eps[0], block_eps[1],
            block_eps[2], decay_log_scale, onednn_rows)
        new_shifts.append(shift)
        new_wkvs.append(wkv)
        new_ffn_shifts.append(ffn_shift)
    return x, new_shifts, new_wkvs, new_ffn_shifts


def _normed_stack_step(
    x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, norm_eps: float,
    parameters: List[List[torch.Tensor]], shifts: List[torch.Tensor], wkvs: List[torch.Tensor],
    ffn_shifts: List[torch.Tensor], heads: int, eps: List[List[float]], decay_log_scale: float, onednn_rows: int,
    final_weight: torch.Tensor, final_bias: torch.Tensor, final_eps: float,
) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
    """_stack_step between the backbone's two LayerNorms over the channels, for a token that is no padding:
    ``embed_norm`` (norm_*) on the embedded token x (B, 1, C) before the blocks, ``norm`` (final_*) after them. Returns
    the normed (B, 1, C) output and each block's new attn_shift, wkv and ffn_shift. (What a cache's plan runs,
    ``models/rwkv7/step_plan.py``: the two norms' Python calls cost about 50 µs of a 1.5 ms step at 256 channels.)"""
    channels = x.size(2)
    h = F.layer_norm(x[:, 0], [channels], norm_weight, norm_bias, norm_eps)
    h, new_shifts, new_wkvs, new_ffn_shifts = _stack_step(h, parameters, shifts, wkvs, ffn_shifts, None, heads, eps,
                                                          decay_log_scale, onednn_rows)
    y = F.layer_norm(h, [channels], final_weight, final_bias, final_eps)[:, None]
    return y, new_shifts, new_wkvs, new_ffn_shifts


_scripted: Any = None  # the scripted (_stack_step, _normed_stack_step); False where scripting failed


def scripted_stack_step() -> Any:
    """The scripted :func:`_stack_step`, scripted on first use (with :func:`_normed_stack_step`); None where
    TorchScript could not script them."""
    global _scripted
    if _scripted is None:
        try:
            with warnings.catch_warnings():
                # torch marks TorchScript deprecated (it points to torch.compile, which compile_decoding() offers):
                # torch 2.13 with a DeprecationWarning, which Python hides, 2.15 with a FutureWarning, which every
                # user saw at their first RWKV-7 decode. Where a release removes it, this path steps aside as below.
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is ")
                _scripted = (torch.jit.script(_stack_step), torch.jit.script(_normed_stack_step))
        except Exception as err:  # noqa: BLE001 -- any failure of TorchScript leaves the Python path, said once
            logger.warning("RWKV-7's TorchScript decode step could not be scripted (%s: %s); decoding runs the "
                           "blocks in Python, which is slower at small batch sizes", type(err).__name__, err)
            _scripted = False
    return _scripted[0] if _scripted else None


def scripted_normed_step() -> Any:
    """The scripted :func:`_normed_stack_step`, where :func:`scripted_stack_step` is there; else None."""
    return _scripted[1] if scripted_stack_step() is not None else None


def _plain(tensors: Sequence[Any]) -> bool:
    # Float32 tensors of torch's own types: a quantised weight is a tensor subclass only its own operators read. (A
    # weight on another device than the input fails in either path, with torch's error.) Set tests over map(): every
    # decode step reads about 25 tensors per block.
    return _PLAIN_TYPES.issuperset(map(type, tensors)) and _FLOAT32.issuperset(map(_DTYPE, tensors))


_PLAIN_TYPES = frozenset({torch.Tensor, nn.Parameter})
_FLOAT32 = frozenset({torch.float32})
_DTYPE = operator.attrgetter("dtype")
_LINEARS = ("receptance", "key", "value", "output")
# The functions _block_step computes, as defined (torch's as its source defines them, whatever was put on the class
# before seqzoo was imported): one replaced on its class (by a library or a user) must run.
_FORWARDS = ((RWKV7TimeMix, "forward", RWKV7TimeMix.forward), (RWKV7TimeMix, "_step", RWKV7TimeMix._step),
             (RWKV7ChannelMix, "forward", RWKV7ChannelMix.forward),
             (nn.LayerNorm, "forward", torch_forward(nn.LayerNorm)), (nn.Linear, "forward", torch_forward(nn.Linear)))
# The functions the Python path looks up at each call, as they were when seqzoo was imported: one replaced since (a
# profiler counting F.linear's calls, say) must be called.
_FUNCTIONS = tuple((owner, name, getattr(owner, name)) for owner, name in (
    (F, "linear"), (F, "layer_norm"), (F, "group_norm"), (F, "normalize"), (torch, "relu"), (torch, "sigmoid"),
    (torch, "tanh"), (torch, "addcmul"), (torch, "addmm"), (torch, "lerp"), (torch, "rsub"), (torch, "where"),
    (torch, "stack"), (torch.linalg, "vector_norm"), (torch.Tensor, "square")))


def block_parts(block: nn.Module, block_class: type) -> tuple[nn.Module, ...] | None:
    """``block``'s modules _block_step computes, in this order: the block, its two LayerNorms, time mix, channel mix,
    the time mix's GroupNorm and its four linear maps, then the channel mix's two; None where the block is not what
    _block_step computes (a part of another class, a linear map with a bias, a hook on any, a ``__call__`` of a
    class's own). (Submodules are read from the modules' own dicts: a module attribute read costs more than the
    check.)"""
    if type(block) is not block_class:
        return None
    try:
        blocks = block._modules
        norm, attn, ffn_norm, ffn = (blocks[name] for name in block.part_names)
        attn_modules, ffn_modules = attn._modules, ffn._modules
        linears = [attn_modules[name] for name in _LINEARS] + [ffn_modules["key"], ffn_modules["value"]]
        group_norm = attn_modules["ln_x"]
    except KeyError:  # a part removed or replaced by a plain attribute
        return None
    # (ln_x is read, never called (see _step), but the Python path reads it through module_weights, which runs an
    # accelerate hook on it: a hooked ln_x runs there)
    parts = (block, norm, attn, ffn_norm, ffn, group_norm, *linears)
    if (type(attn) is not RWKV7TimeMix or type(ffn) is not RWKV7ChannelMix or type(norm) is not nn.LayerNorm
            or type(ffn_norm) is not nn.LayerNorm or type(group_norm) is not nn.GroupNorm):
        return None
    for linear in linears:  # (plain loops: generator expressions show in a decode step's time)
        if type(linear) is not nn.Linear or linear._parameters.get("bias") is not None:
            return None
    for module in parts:
        if has_hooks(module) or not plain_module_call(type(module)):  # (a __call__ of the class's own runs)
            return None
    return parts


def block_settings(parts: tuple[nn.Module, ...], idx: int, heads: int) -> list[float] | None:
    """Block ``idx``'s three eps (norm, ffn_norm, group_norm) from its :func:`block_parts`, read now; None where the
    block does not run as _block_step computes: dropout, a norm after the mixers, a norm over more than the channels,
    the value residual not in every block but the first (layer 0 makes v_first, every later one reads it), or other
    heads than ``heads``. (A weight of another width fails in either path, with torch's error.)"""
    block, norm, attn, ffn_norm, _, group_norm = parts[:6]
    if (block.has_dropout or not block.pre_norm or len(norm.normalized_shape) != 1
            or len(ffn_norm.normalized_shape) != 1 or attn.has_value_residual != (idx > 0) or attn.num_heads != heads):
        return None
    return [norm.eps, ffn_norm.eps, group_norm.eps]


def block_tensors(parts: tuple[nn.Module, ...]) -> list[torch.Tensor] | None:
    """The tensors _block_step takes for a block's :func:`block_parts`, read from the modules now; None where one is
    missing, not a plain float32 tensor (a quantised weight, an affine-less norm) or replaced by a plain attribute."""
    _, norm, attn, ffn_norm, ffn, group_norm, *linears = parts
    try:
        own = attn._parameters
        tensors = [norm._parameters["weight"], norm._parameters["bias"], *(own[name] for name in _TIME_MIX),
                   *(linear._parameters["weight"] for linear in linears[:4]), group_norm._parameters["weight"],
                   group_norm._parameters["bias"], ffn_norm._parameters["weight"], ffn_norm._parameters["bias"],
                   ffn._parameters["x_k"], linears[4]._parameters["weight"], linears[5]._parameters["weight"]]
        if attn.has_value_residual:
            tensors += [own[name] for name in _VALUE_RESIDUAL]
    except KeyError:  # a parameter removed or replaced by a plain attribute
        return None
    if not _plain(tensors):  # (None too: an affine-less norm)
        return None
    return tensors


def stack_declined(block_class: type, block_forward: Any) -> bool:
    """Whether the stack must run block by block whatever its blocks, as things are now: gradients recorded, a
    ``torch.compile`` trace, autocast, a torch function mode, global module hooks, or a forward or function the step
    stands in for replaced since (see the module docstring)."""
    return (torch.is_grad_enabled() or torch.compiler.is_compiling() or torch._C._is_any_autocast_enabled()
            or torch._C._is_torch_function_mode_enabled() or global_module_hooks()
            or block_class.forward is not block_forward
            or not all(getattr(cls, name) is fn for cls, name, fn in _FORWARDS)
            or not all(getattr(owner, name) is fn for owner, name, fn in _FUNCTIONS))


def chunked_chosen(hidden_states: torch.Tensor, heads: int, head_size: int) -> bool:
    """Whether the kernel registry chooses the ``chunked`` backend for the step's ``wkv7`` call on ``hidden_states``
    (B, 1, C) (a forced ``reference`` backend, or a plugin's, is honoured)."""
    return chunked_chosen_stamped(hidden_states, heads, head_size)[0]


def chunked_chosen_stamped(hidden_states: torch.Tensor, heads: int, head_size: int) -> tuple[bool, object | None]:
    """:func:`chunked_chosen`, and the registry's stamp of the choice (``registry.select_stamped``)."""
    probe = hidden_states.new_empty(hidden_states.shape[0], 1, heads, head_size)  # what the step's call would be given
    backend, stamp = kernel_registry.select_stamped("wkv7", probe, probe, probe, probe, probe, probe,
                                                    initial_state=None)
    return backend.load() is chunked.wkv7, stamp


def state_dicts(shifts: Sequence[torch.Tensor], wkvs: Sequence[torch.Tensor],
                ffn_shifts: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Each block's new state dict, from the scripted step's three lists."""
    return [{"attn_shift": shift, "wkv": wkv, "ffn_shift": ffn_shift}
            for shift, wkv, ffn_shift in zip(shifts, wkvs, ffn_shifts)]


def step_blocks(
    blocks: Sequence[nn.Module], block_class: type, block_forward: Any, hidden_states: torch.Tensor,
    states: Sequence[dict | None], mask: torch.Tensor | None,
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]] | None:
    """One token through a stack of RWKV-7 blocks in one scripted call, or None when the stack must run block by
    block (see the module docstring for when).

    block_class: the blocks' class; block_forward: its forward as defined (transformers wraps a layer's forward per
    class, so only the defining module can keep it), declined when the class's forward is another now;
    hidden_states: (B, 1, C) the first block's input; ``states[i]``: block i's cache entry (None: zeros); mask:
    (B, 1) bool or None. Returns the last block's (B, 1, C) output and each block's new state dict."""
    blocks = list(blocks)
    if (not blocks or stack_declined(block_class, block_forward) or not _plain((hidden_states,))
            or hidden_states.device.type != "cpu" or hidden_states.dim() != 3 or hidden_states.shape[1] != 1):
        return None
    first = blocks[0]._modules.get("attn")
    if type(first) is not RWKV7TimeMix:
        return None
    batch, _, channels = hidden_states.shape
    heads, head_size = first.num_heads, first.head_size
    parameters, eps = [], []
    for idx, block in enumerate(blocks):
        parts = block_parts(block, block_class)
        settings = None if parts is None else block_settings(parts, idx, heads)
        tensors = None if settings is None else block_tensors(parts)
        if tensors is None:
            return None
        parameters.append(tensors)
        eps.append(settings)
    if not chunked_chosen(hidden_states, heads, head_size):
        return None
    carried = [_state(state, batch, channels, heads, head_size, hidden_states) for state in states]
    if None in carried:
        return None
    step = scripted_stack_step()
    if step is None:
        return None
    shifts, wkvs, ffn_shifts = (list(column) for column in zip(*carried))
    x, shifts, wkvs, ffn_shifts = step(hidden_states[:, 0], parameters, shifts, wkvs, ffn_shifts, mask, heads, eps,
                                       DECAY_LOG_SCALE, onednn_linear.rows_from())
    return x[:, None], state_dicts(shifts, wkvs, ffn_shifts)


def _state(state: dict | None, batch: int, channels: int, heads: int, head_size: int,
           x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """A block's (attn_shift, wkv, ffn_shift) as the step reads them: zeros where the cache has none yet, in float32
    (as the Python path casts them); None where one has another shape than the block keeps (the blocks then raise
    their own error, or compute what they compute)."""
    state = state or {}
    shift, wkv, ffn_shift = state.get("attn_shift"), state.get("wkv"), state.get("ffn_shift")
    if ((shift is not None and shift.shape != (batch, channels))
            or (ffn_shift is not None and ffn_shift.shape != (batch, channels))
            or (wkv is not None and wkv.shape != (batch, heads, head_size, head_size))):
        return None
    shift = x.new_zeros(batch, channels) if shift is None else shift.float()
    ffn_shift = x.new_zeros(batch, channels) if ffn_shift is None else ffn_shift.float()
    wkv = x.new_zeros(batch, heads, head_size, head_size) if wkv is None else wkv.float()
    return shift, wkv, ffn_shift


__all__ = ["scripted_normed_step", "scripted_stack_step", "step_blocks"]
