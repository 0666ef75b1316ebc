"""The recurrent encoder-decoder: an RNN / LSTM / GRU encoder (optionally bidirectional), a bridge from its final
states to the decoder's initial ones, and an RNN / LSTM / GRU decoder with no attention (Sutskever et al. 2014),
Bahdanau's (2015) or Luong's (2015).

Both sides are stacks of seqzoo's recurrent mixers (``seqzoo.layers.recurrent``), so their compute goes through
the kernel registry (ops ``rnn``, ``lstm``, ``gru``) and a padded position never changes a state. The decoder at
step t, with s the top layer's state, c the context, h~ the attentional vector Luong calls it:

    none            s_t = f(s_{t-1}, y_{t-1});                     output s_t
    bahdanau        c_t = attend(s_{t-1});  s_t = f(s_{t-1}, [y_{t-1}; c_t]);       output h~_t = tanh(W_c [c_t; s_t])
    luong           s_t = f(s_{t-1}, y_{t-1});  c_t = attend(s_t);                  output h~_t = tanh(W_c [c_t; s_t])
    luong + feeding s_t = f(s_{t-1}, [y_{t-1}; h~_{t-1}]); c_t = attend(s_t);       output h~_t

Bahdanau's and input feeding's decoders need step t-1's attention to form step t's input, so they step token by
token in Python (one kernel call per layer and step); the other two run the whole target through each layer's
kernel at once and attend to every position in parallel.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from seqzoo.layers.recurrent import RECURRENT_MIXERS
from seqzoo.layers.seq2seq_attention import SourceAttention
from seqzoo.models.compat import as_returned
from seqzoo.models.inputs import ForwardInputs, prepare_inputs

from .configuration_seq2seq import STATE_NAMES, Seq2SeqConfig
from .outputs import DecoderOutput, Seq2SeqEncoderOutput


def recurrent_layer(config: Seq2SeqConfig, cell: str, input_size: int) -> nn.Module:
    """One recurrent mixer reading ``input_size`` inputs. The mixer protocol sizes a layer's input from its config:
    a mixer built as layer 0 reads the config's embedding width, which ``cell_config`` sets to ``input_size``."""
    return RECURRENT_MIXERS[cell](config.cell_config(cell, input_size), 0)


def check_sources_not_empty(mask: torch.Tensor | None) -> None:
    if mask is None or torch.compiler.is_compiling():
        return
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"source row(s) {empty[:8]} have no real token (their attention_mask is all 0): a decoder "
                         "cannot attend to, or start from, an empty source")


def check_cached_source(cached_length: int, memory: torch.Tensor) -> None:
    """Refuse to continue a cache whose attention keys were computed from a source of ``cached_length`` positions
    with the annotations ``memory`` (B, S, D) of another length: a cache continues the source it was built from."""
    if cached_length != memory.shape[1]:
        raise ValueError(
            f"the cache holds the attention's keys of a source of {cached_length} position(s), but the source given "
            f"has {memory.shape[1]}: a cache continues the source it was built from; pass that source (or its "
            "encoder_outputs) again, or start without a cache for a new source")


class CheckpointedStack(nn.Module):
    """A stack of layers whose calls go through the model's activation checkpointing
    (``gradient_checkpointing_enable()``, which sets these attributes) when it is on, the module trains and
    gradients are being taken."""

    gradient_checkpointing = False
    checkpoint_every_n_layers = 1

    def run_layer(self, idx: int, function: Any, *args: Any) -> Any:
        """``function(*args)`` for layer ``idx``. Whatever should get a gradient is passed positionally: torch's
        reentrant checkpoint carries gradients through its positional tensors only."""
        if (self.gradient_checkpointing and self.training and torch.is_grad_enabled()
                and idx % self.checkpoint_every_n_layers == 0):
            return self._gradient_checkpointing_func(function, *args)
        return function(*args)

    def run_recurrent(self, idx: int, layer: nn.Module, x: torch.Tensor, state: dict | None,
                      mask: torch.Tensor | None, names: tuple[str, ...]) -> tuple[torch.Tensor, dict]:
        """``layer(x, state=state, mask=mask)``, its states passed and returned as positional tensors (the bridge's
        start states get their gradient under a reentrant checkpoint too)."""
        given = names if state is not None else ()

        def run(x: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
            output, new = layer(x, state=dict(zip(given, values)) if given else None, mask=mask)
            return (output, *(new[name] for name in names))

        output, *values = self.run_layer(idx, run, x, *(state[name] for name in given))
        return output, dict(zip(names, values))


class DecoderStack(CheckpointedStack):
    """A decoder embeds its inputs with the encoder's table (one table, owned by the encoder): its
    ``get_input_embeddings`` / ``set_input_embeddings`` reach that table, as T5's decoder stack does."""

    def share_embedding(self, encoder: nn.Module) -> None:
        object.__setattr__(self, "_encoder", encoder)  # not a submodule: the encoder is the model's

    def get_input_embeddings(self) -> nn.Module:
        return self._encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self._encoder.embed_tokens = value


class RecurrentEncoder(CheckpointedStack):
    """Embedding -> dropout -> recurrent layer (and its backward twin) -> [dropout -> recurrent layer] x (N - 1).

    Dropout is between layers, as in ``torch.nn.LSTM(dropout=p)`` and as the decoder's: the last layer's outputs,
    the annotations the attention reads, are not dropped (nor the final states the bridge reads).

    The bidirectional encoder is built here, not in the mixers: the backward layer is the same mixer class run
    over the time-reversed source and mask (a pad position never changes a state, so left and right padding are
    both exact), its outputs reversed back and concatenated with the forward ones (Bahdanau et al.)."""

    def __init__(self, config: Seq2SeqConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = embed_tokens
        cell, count = config.encoder_type, config.num_hidden_layers
        width = [config.embedding_size] + [config.annotation_size] * (count - 1)
        self.layers = nn.ModuleList(recurrent_layer(config, cell, width[i]) for i in range(count))
        self.backward_layers = (nn.ModuleList(recurrent_layer(config, cell, width[i]) for i in range(count))
                                if config.bidirectional else None)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Seq2SeqEncoderOutput | tuple:
        inputs = prepare_inputs(self, input_ids, inputs_embeds, attention_mask, None, False)
        mask = inputs.padding_mask  # (B, S) bool, None when nothing is padded
        check_sources_not_empty(mask)
        hidden_states = self.dropout(inputs.embeds)  # (B, S, E)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        finals = []
        names = STATE_NAMES[self.config.encoder_type]  # not layer.state_names: peft's LoRA wraps the layer
        for idx, layer in enumerate(self.layers):
            if idx:
                hidden_states = self.dropout(hidden_states)  # between layers
            output, state = self.run_recurrent(idx, layer, hidden_states, None, mask, names)  # (B, S, H)
            parts = [state[name] for name in names]
            if self.backward_layers is not None:
                reversed_mask = None if mask is None else mask.flip(1)
                backward, backward_state = self.run_recurrent(idx, self.backward_layers[idx],
                                                              hidden_states.flip(1), None, reversed_mask, names)
                output = torch.cat([output, backward.flip(1)], dim=-1)  # (B, S, 2H)
                parts += [backward_state[name] for name in names]
            finals.append(torch.cat(parts, dim=-1))
            hidden_states = output
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        output = Seq2SeqEncoderOutput(last_hidden_state=hidden_states, final_state=torch.stack(finals, dim=1),
                                      hidden_states=all_hidden_states)
        return as_returned(self, output, return_dict)  # (a tuple of the fields set when return_dict is False)


class Bridge(nn.Module):
    """The decoder's initial state per layer from the encoder's final states (``config.bridge``): ``copy``
    (Sutskever et al.), ``projection`` (Bahdanau et al.'s s_0 = tanh(W_s h_1^<-), here of both directions'
    final states and of every named state: s_0 = tanh(W [h->; h<-] + b)), or ``zeros``."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.kind, self.hidden_size = config.bridge, config.hidden_size
        self.names = STATE_NAMES[config.decoder_type]
        self.source_width = source_width = len(STATE_NAMES[config.encoder_type]) * config.annotation_size
        self.projections = (nn.ModuleList(nn.Linear(source_width, len(self.names) * config.hidden_size)
                                          for _ in range(config.num_decoder_layers))
                            if self.kind == "projection" else None)
        self.num_layers = config.num_decoder_layers

    def forward(self, final_state: torch.Tensor | None, memory: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        if self.kind == "zeros":
            zeros = memory.new_zeros(memory.shape[0], self.hidden_size)
            return [{name: zeros for name in self.names} for _ in range(self.num_layers)]
        if final_state is None:
            raise ValueError(f"bridge={self.kind!r} starts the decoder from the encoder's final states, but the "
                             "encoder_outputs passed hold none (final_state); pass what the model's encoder returned")
        expected = (memory.shape[0], self.num_layers, self.source_width)
        if not isinstance(final_state, torch.Tensor) or tuple(final_state.shape) != expected:
            shape = tuple(final_state.shape) if isinstance(final_state, torch.Tensor) else type(final_state).__name__
            raise ValueError(f"encoder_outputs.final_state of shape {shape} is not this model's encoder's final state "
                             f"for this source: expected {expected} (batch, num_hidden_layers, the named states of "
                             "every direction side by side); pass what the model's encoder returned")
        states = []
        for idx in range(self.num_layers):
            source = final_state[:, idx]  # (B, F)
            if self.projections is not None:
                source = torch.tanh(self.projections[idx](source))
            states.append(dict(zip(self.names, source.split(self.hidden_size, dim=-1))))
        return states


class RecurrentDecoder(DecoderStack):
    """The decoder's recurrent layers, its attention over the source and Luong's output layer ``W_c``."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = config
        hidden, cell = config.hidden_size, config.decoder_type
        if config.attention == "bahdanau":
            extra = config.annotation_size  # the context joins the input
        else:
            extra = hidden if config.input_feeding else 0  # the previous attentional vector joins it
        width = [config.embedding_size + extra] + [hidden] * (config.num_decoder_layers - 1)
        self.layers = nn.ModuleList(recurrent_layer(config, cell, width[i]) for i in range(len(width)))
        self.bridge = Bridge(config)
        self.attention = self.readout = None
        if config.has_attention:
            self.attention = SourceAttention(config.attention, hidden, config.annotation_size, config.attention_size)
            self.readout = nn.Linear(config.annotation_size + hidden, hidden, bias=False)  # W_c
        self.dropout = nn.Dropout(config.dropout)

    def start(self, encoder_outputs: Seq2SeqEncoderOutput) -> list[Any]:
        """The cache entries a decoder starts from: each layer's state, then the attention's keys (and Luong's
        input-feeding vector, zeros at first)."""
        memory = encoder_outputs.last_hidden_state
        entries: list[Any] = self.bridge(encoder_outputs.final_state, memory)
        if self.attention is not None:
            attention_state = {"keys": self.attention.keys(memory)}
            if self.config.input_feeding:
                attention_state["feed"] = memory.new_zeros(memory.shape[0], self.config.hidden_size)
            entries.append(attention_state)
        return entries

    def _layers(self, x: torch.Tensor, states: list[dict], mask: torch.Tensor | None,
                outputs: list[list[torch.Tensor]] | None) -> tuple[torch.Tensor, list[dict]]:
        """x (B, T, I) through every layer, dropout between them; ``outputs`` collects each layer's output."""
        new_states = []
        names = STATE_NAMES[self.config.decoder_type]
        for idx, layer in enumerate(self.layers):
            x, state = self.run_recurrent(idx, layer, self.dropout(x) if idx else x, states[idx], mask, names)
            new_states.append(state)
            if outputs is not None:
                outputs[idx].append(x)
        return x, new_states

    def forward(
        self,
        inputs: ForwardInputs,
        memory: torch.Tensor,
        source_mask: torch.Tensor | None,
        entries: list[Any],
        output_attentions: bool,
        output_hidden_states: bool,
    ) -> DecoderOutput:
        """``inputs``: the decoder inputs, checked and embedded (B, T, E); memory (B, S, D) the annotations;
        ``entries`` from :meth:`start` or the cache; ``source_mask`` (B, S) False at source padding."""
        count = len(self.layers)
        states, attention_state = entries[:count], (entries[count] if self.attention is not None else None)
        if attention_state is not None:
            attention_state = self._continued(attention_state, memory)
        target_mask = inputs.padding_mask  # (B, T) False at padding of the decoder inputs
        x = self.dropout(inputs.embeds)
        per_layer: list[list[torch.Tensor]] | None = [[] for _ in range(count)] if output_hidden_states else None
        weights = None
        if self.attention is None:
            output, states = self._layers(x, states, target_mask, per_layer)
        elif not self.config.steps_in_python:
            # Luong without input feeding: the whole target through each layer, then every position attends.
            top, states = self._layers(x, states, target_mask, per_layer)
            context, weights = self.attention(top, attention_state["keys"], memory, source_mask)
            output = torch.tanh(self.readout(torch.cat([context, top], dim=-1)))
        else:
            output, states, attention_state, weights = self._step_by_step(x, memory, source_mask, states,
                                                                          attention_state, target_mask, per_layer)
        hidden_states = None
        if output_hidden_states:
            hidden_states = (x, *(torch.cat(outputs, dim=1) for outputs in per_layer))
            if self.attention is not None:
                hidden_states += (output,)
        cross = (weights[:, None],) if output_attentions and weights is not None else None  # (B, 1, T, S)
        entries = states + ([attention_state] if attention_state is not None else [])
        return DecoderOutput(self.dropout(output), entries, hidden_states=hidden_states, cross_attentions=cross)

    @staticmethod
    def _continued(attention_state: dict, memory: torch.Tensor) -> dict:
        """The attention's keys (and Luong's fed vector), from :meth:`start` or a cache, for the source ``memory``
        (B, S, D): of its length, and in its dtype, as the layers cast a cached state to the model's."""
        keys = attention_state["keys"]
        check_cached_source(keys.shape[1], memory)
        if keys.dtype == memory.dtype:
            return attention_state
        return {name: value.to(memory.dtype) for name, value in attention_state.items()}

    def _step_by_step(self, x, memory, source_mask, states, attention_state, target_mask, per_layer):
        keys, feed = attention_state["keys"], attention_state.get("feed")
        bahdanau = self.config.attention == "bahdanau"
        outputs, all_weights = [], []
        for t in range(x.shape[1]):
            step_mask = None if target_mask is None else target_mask[:, t : t + 1]  # (B, 1)
            if bahdanau:  # the previous state queries (a cached one in the cache's dtype: the keys' then)
                context, weights = self.attention(states[-1]["h"][:, None].to(keys.dtype), keys, memory, source_mask)
                step_input = torch.cat([x[:, t : t + 1], context], dim=-1)
            else:
                step_input = torch.cat([x[:, t : t + 1], feed[:, None]], dim=-1)
            top, states = self._layers(step_input, states, step_mask, per_layer)  # (B, 1, H)
            if not bahdanau:  # Luong: the current state queries
                context, weights = self.attention(top, keys, memory, source_mask)
            attentional = torch.tanh(self.readout(torch.cat([context, top], dim=-1)))  # h~_t (B, 1, H)
            if feed is not None:  # a padded step leaves the fed vector as it was, like every state
                feed = attentional[:, 0] if step_mask is None else torch.where(step_mask, attentional[:, 0], feed)
            outputs.append(attentional)
            all_weights.append(weights)
        attention_state = {"keys": keys, **({"feed": feed} if feed is not None else {})}
        return torch.cat(outputs, dim=1), states, attention_state, torch.cat(all_weights, dim=1)


__all__ = ["Bridge", "CheckpointedStack", "DecoderStack", "RecurrentDecoder", "RecurrentEncoder",
           "check_cached_source", "check_sources_not_empty", "recurrent_layer"]
