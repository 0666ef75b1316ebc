"""Classic recurrent mixers (Elman RNN, LSTM, GRU) with the torch.nn weight layout; compute goes through the kernel
registry (ops ``rnn``, ``lstm``, ``gru``).

The input of layer 0 is the token embedding (``config.embedding_dim`` wide, which the classic LM lets differ from
the state size); every later layer reads the previous layer's ``hidden_size`` outputs.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn
from transformers import initialization as init

from seqzoo.cache import INPUT_TABLE_ATTRIBUTE
from seqzoo.kernels import dispatch, rnn_cells  # noqa: F401  (rnn_cells registers the ops)
from seqzoo.kernels import registry as kernel_registry
from seqzoo.kernels.rnn_cells import fused
from seqzoo.layers.mixer import Mixer, global_module_hooks, has_hooks, plain_module_call

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


class RecurrentMixer(Mixer):
    """One recurrent layer over a (B, T, input_size) sequence, carrying ``h`` (and ``c`` for the LSTM)."""

    cell: ClassVar[str]
    state_names: ClassVar[tuple[str, ...]] = ("h",)
    projection_parameters = ("weight_ih", "weight_hh")
    # The mixer passes a reset to its kernel, whose fused backend re-packs the documents as a PackedSequence; but on
    # CPU torch's fused RNNs run a PackedSequence's backward several times more slowly per token than a padded batch,
    # and a packed training step measured 0.66-0.94x (LSTM) and mostly 0.8-0.9x (GRU) the speed of unpacking the
    # documents (BENCHMARKS.md, "Packed rows"). So the classic models unpack.
    takes_reset = False

    def __init__(self, config: Any, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.input_size = config.layer_input_size(layer_idx)
        self.hidden_size = config.hidden_size
        self.orthogonal_init = config.orthogonal_init
        rows = GATES[self.cell] * self.hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, self.input_size))
        self.weight_hh = nn.Parameter(torch.empty(rows, self.hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(rows))
        self.bias_hh = nn.Parameter(torch.empty(rows))
        # torch.nn's default until the model initialises it: U(-1/sqrt(H), 1/sqrt(H)).
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.input_size} -> {self.hidden_size}"

    @classmethod
    def state_bytes(cls, config: Any, dtype_bytes: int = 4) -> int:
        return len(cls.state_names) * config.hidden_size * dtype_bytes

    def init_weights(self) -> None:
        bound = 1.0 / self.hidden_size**0.5
        init.uniform_(self.weight_ih, -bound, bound)
        if self.orthogonal_init:
            # One orthogonal matrix per gate block keeps each gate's recurrence norm-preserving at init (Saxe 2014).
            blocks = [init.orthogonal_(torch.empty(self.hidden_size, self.hidden_size))
                      for _ in range(GATES[self.cell])]
            init.copy_(self.weight_hh, torch.cat(blocks, dim=0))
        else:
            init.uniform_(self.weight_hh, -bound, bound)
        init.zeros_(self.bias_ih)
        init.copy_(self.bias_hh, self.initial_bias_hh())

    def initial_bias_hh(self) -> torch.Tensor:
        return torch.zeros_like(self.bias_hh)

    def forward(
        self, hidden_states: torch.Tensor, *, state: dict | None = None, mask: torch.Tensor | None = None,
        reset: torch.Tensor | None = None, **context: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # hidden_states: (B, T, I); mask, reset: (B, T) bool or None. Returns (B, T, H) and the new state.
        if state is None:
            zeros = hidden_states.new_zeros(hidden_states.shape[0], self.hidden_size)
            state = {name: zeros for name in self.state_names}
        return self.run(hidden_states, state, mask, reset)

    def weights(self) -> tuple[torch.Tensor, ...]:
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh


class RNNMixer(RecurrentMixer):
    """Elman RNN (tanh or relu): h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""

    cell = "rnn"

    def __init__(self, config: Any, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.nonlinearity = config.nonlinearity

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonlinearity={self.nonlinearity}"

    def run(self, x, state, mask, reset):
        y, h = dispatch("rnn", x, state["h"].to(x.dtype), *self.weights(), nonlinearity=self.nonlinearity, mask=mask,
                        reset=reset)
        return y, {"h": h}


class LSTMMixer(RecurrentMixer):
    """LSTM (gate order i, f, g, o), with the forget-gate bias remedy."""

    cell = "lstm"
    state_names = ("h", "c")

    def __init__(self, config: Any, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.forget_bias = config.forget_bias

    def initial_bias_hh(self) -> torch.Tensor:
        # A positive forget bias lets gradients flow early in training (Gers et al. 2000; Jozefowicz et al. 2015).
        bias = torch.zeros_like(self.bias_hh)
        bias[self.hidden_size : 2 * self.hidden_size] = self.forget_bias
        return bias

    def run(self, x, state, mask, reset):
        y, (h, c) = dispatch("lstm", x, state["h"].to(x.dtype), state["c"].to(x.dtype), *self.weights(), mask=mask,
                             reset=reset)
        return y, {"h": h, "c": c}


class GRUMixer(RecurrentMixer):
    """GRU (gate order r, z, n; torch.nn's convention)."""

    cell = "gru"

    def run(self, x, state, mask, reset):
        y, h = dispatch("gru", x, state["h"].to(x.dtype), *self.weights(), mask=mask, reset=reset)
        return y, {"h": h}


RECURRENT_MIXERS: dict[str, type[RecurrentMixer]] = {"rnn": RNNMixer, "lstm": LSTMMixer, "gru": GRUMixer}
FUSED_KERNELS = {"rnn": fused.rnn, "lstm": fused.lstm, "gru": fused.gru}  # the backend step_stack stands in for


class InputTable:
    """Layer 0's input projection of every token, ``embedding @ weight_ih.T + bias_ih`` (vocab, gates * H), looked up
    instead of multiplied in a classic model's decode steps: layer 0's input is the token's embedding itself, with
    nothing between, so the projection depends on the token alone, and a step that reads its B rows leaves
    ``weight_ih`` out of the matrices it streams from memory (BENCHMARKS.md, "Decode against each family's CPU
    runtime", run N).

    Built from the weights by one product over the vocabulary, and held by the model for the caches that decode with
    it. A decoding cache takes it on its first step (each ``generate()`` and prefill starts a new cache, and
    ``cache.reset()`` makes one new) after checking that the weights are those it was built from: the same tensors
    at the same storage and version, and the same values, read through their products with a fixed random vector
    (one pass over ``weight_ih`` and the embedding per cache, in float64 for bf16 / fp16 weights: a weight's version
    does not see every change, since torch's fused optimizers, transformers' default ``adamw_torch_fused``, and
    changes through ``.data``, as peft's ``merge_and_unload`` makes, keep it). Otherwise it is built again. Within
    one cache every step checks the tensors, storage and version, not the values: weights changed through ``.data``
    or by a fused optimizer between two steps of one cache are not seen by it. In a block where the caller holds the
    model fixed (``fixed_while_decoding()``: the classic step plan passes :meth:`gates` its block) the values are
    checked at the block's first cache only, and its later caches take the table on the tensors, storage and version:
    a change through ``.data`` or by a fused optimizer inside the block is not seen until it ends. Not a parameter,
    never saved (nor pickled with the model).

    ``policy``: ``"auto"`` (the default) when the vocabulary is at most twice the embedding width (byte- and
    character-level models: the table then holds at most twice the values of ``weight_ih``), ``"always"`` for any
    vocabulary (a word-level model's table holds vocab x gates * H values), ``"never"`` not at all. Only steps without
    gradients use it (``torch.no_grad()`` or inference mode, as ``generate()`` runs), on the CPU (on CUDA torch's LSTM
    and GRU cells hand the input bias to a fused kernel that takes a 1-d bias only), where the weights are plain float
    tensors of one dtype and not inference tensors (whose changes cannot be seen)."""

    POLICIES = ("auto", "always", "never")
    CACHE_ATTRIBUTE = INPUT_TABLE_ATTRIBUTE  # the table a cache decodes with (a _BuiltTable)

    def __init__(self) -> None:
        self.policy = "auto"
        self.built: _BuiltTable | None = None  # the latest built (immutable: a rebuild puts another in its place)

    def __getstate__(self) -> dict:
        # (torch.save(model) pickles the model whole: the table, vocab x gates * H values, is never saved)
        return {**self.__dict__, "built": None}

    def set_policy(self, policy: str) -> None:
        if policy not in self.POLICIES:
            raise ValueError(f"input table policy must be one of {', '.join(map(repr, self.POLICIES))}; got {policy!r}")
        self.policy = policy
        self.built = None

    def applies(self, embedding: torch.Tensor) -> bool:
        """Whether steps without gradients through ``embedding`` (vocab, E) read the table, by the policy and the
        embedding's size and device (the weights' own checks aside)."""
        return (self.policy != "never" and embedding.is_cpu
                and not (self.policy == "auto" and embedding.shape[0] > 2 * embedding.shape[1]))

    def gates(self, embedding: torch.Tensor, input_ids: torch.Tensor, cache: Any,
              weights: Sequence[torch.Tensor | None], fixed: object | None = None) -> torch.Tensor | None:
        """The (B, gates * H) input projection of ``input_ids`` (B, 1) through ``embedding`` (vocab, E) and layer 0's
        ``weights`` (weight_ih, weight_hh, bias_ih, bias_hh), read from the table ``cache`` decodes with; None where
        the table is not used. ``fixed``: the open block in which the caller holds the model fixed
        (``fixed_while_decoding()``, as the classic step plan finds it), or None: a table whose values were checked
        (or which was built) in that block is not checked again there."""
        if torch.is_grad_enabled() or not self.applies(embedding):
            return None
        weight_ih, bias_ih = weights[0], weights[2]
        sources = (embedding, weight_ih) if bias_ih is None else (embedding, weight_ih, bias_ih)
        built = getattr(cache, self.CACHE_ATTRIBUTE, None)
        if built is None or not built.made_from(sources):  # a new cache, or its weights changed since its last step
            if any(type(t) not in (torch.Tensor, nn.Parameter) or t.is_inference() or t.dtype != embedding.dtype
                   or t.device != embedding.device for t in sources):
                return None  # (a quantised or offloaded weight: the cells' own path)
            built = self.built
            if (built is None or not built.made_from(sources)
                    or ((fixed is None or built.checked_in is not fixed) and not built.same_values(sources))):
                built = self.built = _BuiltTable(sources)
            if fixed is not None:
                built.checked_in = fixed
            setattr(cache, self.CACHE_ATTRIBUTE, built)
        if input_ids.dtype not in (torch.int64, torch.int32):  # (what the embedding would convert)
            input_ids = input_ids.long()
        return built.table.index_select(0, input_ids[:, 0])  # (the embedding's lookup, without its Python checks)


class _BuiltTable:
    """An input table and what it was built from: the weights (embedding, weight_ih[, bias_ih]), referred to weakly, at
    their storage and version, and their values as seen through a fixed random vector."""

    __slots__ = ("sources", "probe", "prints", "table", "checked_in")

    def __init__(self, sources: tuple[torch.Tensor, ...]) -> None:
        embedding, weight_ih = sources[:2]
        self.table = torch.nn.functional.linear(embedding, weight_ih, sources[2] if len(sources) == 3 else None)
        # Weakly: the model holds its latest table, and a weight replaced since (load_state_dict(assign=True),
        # resize_token_embeddings) is not kept alive by it until the next decode on the CPU builds another (never, for
        # a model moved to another device).
        self.sources = tuple((weakref.ref(t), t._version, t.data_ptr()) for t in sources)
        probe = torch.randn(embedding.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        # A bf16 / fp16 product rounds to 8 / 11 bits, which hides a change of a weight whose probe entry is small
        # (one value of weight_ih moved by 20x its row's mean went unseen): those are read in float64.
        self.probe = probe if embedding.dtype in (torch.bfloat16, torch.float16) else probe.to(embedding.dtype)
        self.prints = self._prints(sources)
        # The fixed_while_decoding() block in which its values were last found those of the weights (or it was built):
        # the caller's promise that the model stays as it is there stands for them at the block's later caches.
        self.checked_in: object | None = None

    def _prints(self, sources: tuple[torch.Tensor, ...]) -> torch.Tensor:
        # A matrix's product with the probe changes with any change of its values (short of one orthogonal to it);
        # the bias is its own print (in the probe's dtype: float64 holds a bf16 / fp16 value exactly). One tensor, for
        # one comparison: each operation of the check costs a new cache's first step a few µs (BENCHMARKS.md, run AX).
        dtype = self.probe.dtype
        return torch.cat([t.to(dtype) @ self.probe if t.dim() == 2 else t.to(dtype) for t in sources])

    def made_from(self, sources: tuple[torch.Tensor, ...]) -> bool:
        if len(self.sources) != len(sources):
            return False
        for (s, version, pointer), t in zip(self.sources, sources):  # (read on every decode step)
            if s() is not t or t._version != version or t.data_ptr() != pointer:
                return False
        return True

    def same_values(self, sources: tuple[torch.Tensor, ...]) -> bool:
        # Bit for bit: a NaN in a weight (an unused token's embedding row) makes its print NaN, which torch.equal
        # never matches, so every new cache built the table again.
        return torch.equal(_bits(self.prints), _bits(self._prints(sources)))

    def __deepcopy__(self, memo: dict) -> _BuiltTable:
        # (a copied cache decodes with the same table, and copies none of the weights it refers to)
        return self

    def __reduce__(self) -> tuple:
        # A pickled cache (torch.save(cache)) is saved without the model's weights the table refers to (its
        # embedding and weight_ih, 150 times the state of a tiny model): the next step builds the table again.
        return _no_table, ()


def _no_table() -> None:
    return None


def _bits(values: torch.Tensor) -> torch.Tensor:
    """A float tensor's bit patterns, as the signed integers of its width."""
    return values.view(_INTEGER_OF_WIDTH[values.element_size()])


_INTEGER_OF_WIDTH = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def step_stack(
    layers: Sequence[nn.Module], hidden_states: torch.Tensor, states: Sequence[dict | None],
    mask: torch.Tensor | None, input_gates: Callable[[tuple], torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]] | None:
    """One token through a stack of recurrent layers with one kernel call per layer and no per-layer Python, or None
    when the stack must run layer by layer.

    Decoding one token at B=1 costs a classic model more in the Python around each layer (module call, dispatch,
    padding checks) than in the cell itself; this runs the exact cell calls the layers would run, in a row
    (``fused.step_layers``). It applies only when that is what the layers would do: every layer an unmodified
    RNN/LSTM/GRU mixer of one kind (no subclass, nothing :func:`~seqzoo.layers.mixer.has_hooks` finds on it -- a
    hook, a forward replaced on the instance, ``compile()`` -- and no global module hooks: they would not be called),
    no autocast, plain float weights, and the kernel registry choosing the
    ``torch`` backend for layer 0's call (so a forced ``reference`` backend, or a plugin's, is honoured: the layers
    then run one by one through dispatch).
    hidden_states: (B, 1, I); ``states[i]``: layer i's cache entry (None: zeros); mask: (B, 1) bool or None;
    ``input_gates``, given layer 0's weights (as ``weights()`` lists them), returns layer 0's input projection of the
    step's tokens (:meth:`InputTable.gates`), or None to compute it from ``hidden_states``.
    Returns the last layer's (B, 1, H) output and each layer's new state dict."""
    layers = list(layers)  # (indexing a ModuleList costs a string conversion per lookup)
    if torch._C._is_any_autocast_enabled() or global_module_hooks():
        return None
    weights = stack_weights(layers)
    if weights is None:
        return None
    cls = type(layers[0])
    nonlinearity = layers[0].nonlinearity if cls.cell == "rnn" else None
    batch, dtype = hidden_states.shape[0], hidden_states.dtype
    names = cls.state_names
    hx = []
    for layer, state in zip(layers, states):
        if state is None:
            zeros = hidden_states.new_zeros(batch, layer.hidden_size)
            hx.append([zeros] * len(names))
        else:
            hx.append([_as_dtype(state[name], dtype) for name in names])
    extra = {} if nonlinearity is None else {"nonlinearity": nonlinearity}
    backend = kernel_registry.select(cls.cell, hidden_states, *hx[0], *weights[0], mask=mask, reset=None, **extra)
    if backend.load() is not FUSED_KERNELS[cls.cell]:
        return None
    params = [fused._params(*w) for w in weights]
    gates = None if input_gates is None else input_gates(weights[0])
    y, new = fused.step_layers(nonlinearity or cls.cell, hidden_states, hx, params, mask, gates)
    return y, [dict(zip(names, layer_new)) for layer_new in new]


def stack_weights(layers: Sequence[nn.Module]) -> list[tuple[torch.Tensor | None, ...]] | None:
    """Each layer's weights, as ``RecurrentMixer.weights()`` lists them (:data:`WEIGHT_NAMES`), where the stack is one
    that :func:`step_stack` may run as one fused cell call per layer: every layer an unmodified mixer of one kind (and,
    for the Elman RNN, one nonlinearity; its class's forward and ``__call__`` as defined), nothing
    :func:`~seqzoo.layers.mixer.has_hooks` finds on it, and its weights all in its parameter dict as plain tensors; else
    None."""
    cls = type(layers[0])
    if not stackable_class(cls):
        return None
    nonlinearity = layers[0].nonlinearity if cls.cell == "rnn" else None
    weights = []
    # (plain loops: at decode sizes a generator expression per check shows in the step's time)
    for layer in layers:
        if type(layer) is not cls or has_hooks(layer) or (nonlinearity is not None
                                                          and layer.nonlinearity != nonlinearity):
            return None
        # The mixer's own parameters, read from the parameter dict (what layer.weights() returns, without a module
        # attribute lookup per tensor); a layer whose weights are not all there (one replaced by a plain attribute)
        # or not plain tensors (a quantised weight: torch's fused cells read a float weight's storage) runs through
        # its own call instead.
        found = tuple(map(layer._parameters.get, WEIGHT_NAMES, _ABSENT))
        if not fused._plain(found):
            return None
        weights.append(found)
    return weights


def stackable_class(cls: type) -> bool:
    """Whether layers of class ``cls`` may run as fused cell calls without their module calls: one of seqzoo's
    recurrent mixers, with the forward and ``__call__`` it was defined with (one put on the class since is called)."""
    return cls in _STACKABLE and cls.forward is _MIXER_FORWARD and plain_module_call(cls)


_STACKABLE = frozenset(RECURRENT_MIXERS.values())
_MIXER_FORWARD = RecurrentMixer.forward  # as defined
WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # the order of RecurrentMixer.weights()
_ABSENT = (object(),) * len(WEIGHT_NAMES)  # what a weight not in the parameter dict reads as (no plain type)


def _as_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


__all__ = ["FUSED_KERNELS", "GATES", "GRUMixer", "InputTable", "LSTMMixer", "RECURRENT_MIXERS", "RNNMixer",
           "RecurrentMixer", "WEIGHT_NAMES", "stack_weights", "step_stack"]
