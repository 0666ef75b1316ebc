"""Backbone and causal LM of the classic recurrent language model (shared by RNN, LSTM and GRU).

The classic LM shape has no blocks, norms or residuals: embedding -> dropout -> [recurrent mixer -> dropout] x N.
The mixers sit directly in ``layers`` (so checkpoint keys are ``model.layers.0.weight_ih`` ..., torch.nn's names).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast

from seqzoo.cache import SeqzooCache, unchanged_on_error
from seqzoo.layers.mixer import build_mixer
from seqzoo.layers.recurrent import RECURRENT_MIXERS, InputTable, step_stack
from seqzoo.models.classic.step_plan import StepPlan
from seqzoo.models.compat import as_returned, model_output
from seqzoo.models.decode_plan import plannable
from seqzoo.models.decode_step import finish_decode_step, is_plain_decode_step, prepare_step_inputs, runs_plainly
from seqzoo.models.inputs import note_no_attention_weights, prepare_inputs, resolve_output_flags
from seqzoo.models.modeling_utils import SeqzooForCausalLM, SeqzooPreTrainedModel, backbone_cache_argument
from seqzoo.models.packing import find_packing


class ClassicRecurrentPreTrainedModel(SeqzooPreTrainedModel):
    supports_gradient_checkpointing = True

    def _set_gradient_checkpointing(self, enable: bool = True, *args: Any, **kwargs: Any) -> None:
        # transformers switches every_n_layers on its GradientCheckpointingLayer blocks; the classic layers are bare
        # mixers that the backbone's loop checkpoints itself, so the backbone keeps the period.
        super()._set_gradient_checkpointing(enable, *args, **kwargs)
        for module in self.modules():
            if isinstance(module, ClassicRecurrentModel):
                module.checkpoint_every_n_layers = kwargs.get("every_n_layers", 1)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # the recurrent mixers: orthogonal hidden-to-hidden blocks, forget-gate bias
        config = self.config
        # (transformers initialises the backbone's modules through the backbone's own _init_weights.)
        layers = getattr(getattr(self, "model", self), "layers", None)
        if config.tie_word_embeddings and layers is not None and module is layers[-1] and hasattr(module, "weight_ih"):
            # The decoder is tied to the N(0, 1) embedding, so an O(1) top-layer state would give logits of std
            # ~sqrt(hidden_size) and a first loss far above ln(vocab_size) (29 nats for rnn-small). The top layer's
            # input weights start hidden_size times smaller: its state starts near 0, the first loss at
            # ln(vocab_size), and the first updates wake the layer (the lab's text models reach the same perplexity
            # in 250 steps as with the full-size init). Not zero: the gradient keeps a path to every input.
            bound = 1.0 / module.hidden_size**1.5  # (transformers' init functions skip loaded weights)
            init.uniform_(module.weight_ih, -bound, bound)
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=config.initializer_range)
        elif isinstance(module, nn.Linear):  # the decoder, when untied: torch.nn.Linear's default bound
            bound = 1.0 / module.in_features**0.5
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.zeros_(module.bias)


class ClassicRecurrentModel(ClassicRecurrentPreTrainedModel):
    """Embedding -> dropout -> [recurrent layer -> dropout] x N. Returns the last layer's outputs."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        mixer = RECURRENT_MIXERS[config.mixer_type]
        self.layers = nn.ModuleList(build_mixer(mixer, config, i) for i in range(config.num_hidden_layers))
        self.dropout = nn.Dropout(config.dropout)
        self.gradient_checkpointing = False
        self.checkpoint_every_n_layers = 1  # (activation_checkpointing_enable(every_n_layers=N): layers 0, N, 2N ...)
        self.input_table = InputTable()  # the decode step's layer-0 projections by token (set_input_table)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        r"""
        attention_mask: (batch, past_length + sequence_length) 0/1; positions with 0 never change any state.
        cache: a :class:`~seqzoo.cache.SeqzooCache` to continue from (``past_key_values`` and ``cache_params`` are
            accepted as older names of the same argument).
        kwargs: only what :data:`seqzoo.models.compat.PASSTHROUGH_KWARGS` lists, or the markers of packed rows
            (``seqzoo/models/packing.py``); anything else raises.
        """
        cache = backbone_cache_argument(self, cache, kwargs)
        note_no_attention_weights(self, kwargs)
        packing = find_packing(self, input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, kwargs)
        if packing is None and self.takes_step(input_ids, inputs_embeds, cache, output_hidden_states, kwargs):
            hidden_states = self.decode_step(input_ids, attention_mask, cache)
            output = model_output(BaseModelOutputWithPast, cache=cache, last_hidden_state=hidden_states)
            return as_returned(self, output, return_dict)
        reset = None  # several documents in a row: each runs alone (see seqzoo/models/packing.py)
        if packing is not None:
            if not packing.takes_resets(self):
                output = packing.run(self, input_ids, inputs_embeds, output_hidden_states, kwargs)
                return as_returned(self, output, return_dict)
            reset, use_cache = packing.starts, False
        use_cache, output_hidden_states = resolve_output_flags(self, use_cache, output_hidden_states)
        inputs = prepare_inputs(self, input_ids, inputs_embeds, attention_mask, cache, use_cache)
        embeds, cache, mask, length = inputs.embeds, inputs.cache, inputs.padding_mask, inputs.length

        # Dropout only in training: in eval it is the identity, and three calls per token show in decoding.
        dropout = self.dropout if self.training else _identity
        hidden_states = dropout(embeds)  # (B, T, E)
        all_hidden_states = () if output_hidden_states else None  # the input of every layer, then the output
        stepped = None
        if length == 1 and reset is None and not output_hidden_states and not self.training:
            # A decode step: every layer's cell in a row, when that is what the layers would run (else None).
            states = [cache.layer(i) if cache is not None else None for i in range(len(self.layers))]
            stepped = step_stack(self.layers, hidden_states, states, mask)
        if stepped is not None:
            hidden_states, states = stepped
            if cache is not None:
                for idx, state in enumerate(states):
                    cache.update_layer(idx, state)
        else:
            with unchanged_on_error(cache):  # (a layer that fails leaves the cache as it was)
                for idx, layer in enumerate(self.layers):
                    if output_hidden_states:
                        all_hidden_states += (hidden_states,)
                    state = cache.layer(idx) if cache is not None else None
                    if (self.gradient_checkpointing and self.training and torch.is_grad_enabled()
                            and idx % self.checkpoint_every_n_layers == 0):
                        # (the model's checkpoint function passes the states positionally: SeqzooPreTrainedModel)
                        hidden_states, state = self._gradient_checkpointing_func(
                            partial(layer, state=state, mask=mask, reset=reset), hidden_states)
                    else:
                        hidden_states, state = layer(hidden_states, state=state, mask=mask, reset=reset)  # (B, T, H)
                    hidden_states = dropout(hidden_states)
                    if cache is not None:
                        cache.update_layer(idx, state)
        if cache is not None:
            cache.advance(length)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)  # after the final norm, as transformers' models do
        output = model_output(
            BaseModelOutputWithPast, cache=cache, last_hidden_state=hidden_states, hidden_states=all_hidden_states
        )
        return as_returned(self, output, return_dict)

    def takes_step(self, input_ids: Any, inputs_embeds: Any, cache: Any, output_hidden_states: bool | None,
                   kwargs: dict[str, Any]) -> bool:
        """Whether a forward call (with no packed rows) is the common decode step that :meth:`decode_step` runs: a
        plain (B, 1) token continuing a ``SeqzooCache``, in eval, with no other keyword and no hidden states asked
        for; never for a subclass with a forward of its own, nor where a forward was put on the class since (the
        causal LM's head would skip it)."""
        return is_plain_decode_step(self, _MODEL_FORWARD, input_ids, inputs_embeds, cache, output_hidden_states,
                                    kwargs)

    def decode_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    cache: SeqzooCache) -> torch.Tensor:
        """The forward of a call :meth:`takes_step` accepts, without the general plumbing (packing, output flags,
        hidden states), which at decode sizes costs as much as the cells: the same checks and errors, then every
        layer's cell in a row (``step_stack``), or the layers one by one where that declines. Returns the last
        layer's (B, 1, H) output; ``cache`` holds the new states and has advanced by one position."""
        layers, embedding = self.layers, self.embed_tokens  # (each module attribute read costs a lookup)
        embeds, mask = prepare_step_inputs(self, input_ids, attention_mask, cache, embedding)
        states = [cache.layer(i) for i in range(len(layers))]
        # Layer 0's input projection looked up by token where the embedding is what it reads (see InputTable).
        input_gates = (partial(self.input_table.gates, embedding.weight, input_ids, cache)
                       if runs_plainly(embedding) and embedding.max_norm is None else None)
        # (dropout is the identity in eval)
        stepped = step_stack(layers, embeds, states, mask, input_gates)
        return finish_decode_step(cache, layers, stepped, embeds, states, mask)

    def plan_steps(self, lm: nn.Module, cache: SeqzooCache) -> StepPlan | None:
        """After a general forward of ``lm`` (this backbone's causal LM) without gradients on ``cache`` (a prefill or
        a decode step): the plan of the cache's later decode steps, or None where they would not run what a plan runs
        (see ``step_plan.py``): where this class's forward is not the one :meth:`decode_step` stands in for (a
        subclass's own, or one put on the class since: :meth:`takes_step` declines those too), and where its
        :meth:`takes_step` or :meth:`decode_step` is not this class's own (the plan stands in for both), on the class
        or set on this instance."""
        if not plannable(self, (_MODEL_FORWARD, _MODEL_TAKES_STEP, _MODEL_DECODE_STEP)):
            return None
        return StepPlan.build(lm, self, cache)


# As defined: one replaced on the class since is called (takes_step), and a plan is made only for these (plan_steps).
_MODEL_FORWARD = ClassicRecurrentModel.forward
_MODEL_TAKES_STEP = ClassicRecurrentModel.takes_step
_MODEL_DECODE_STEP = ClassicRecurrentModel.decode_step


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class ClassicRecurrentForCausalLM(ClassicRecurrentPreTrainedModel, SeqzooForCausalLM):
    base_model_class = ClassicRecurrentModel

    def set_input_table(self, policy: str) -> ClassicRecurrentForCausalLM:
        """Whether decode steps look layer 0's input projection up by token (``embedding[token] @ weight_ih.T +
        bias_ih``, a vocab x gates * H table built from the weights) instead of multiplying by ``weight_ih``:
        ``"auto"`` (the default: when the vocabulary is at most twice the embedding width, as in byte- and
        character-level models), ``"always"`` or ``"never"``. Steps without gradients on the CPU use it
        (``generate()``, a loop under ``torch.no_grad()``); each new cache checks that the weights are still those
        it was built from (values included) and it is built again where not; never saved. The same values up to
        float rounding. A weight changed through ``.data`` or by a fused optimizer between two steps of one cache is
        not seen by that cache, nor, inside a ``fixed_while_decoding()`` block, by the block's later caches (their
        values are checked at its first; ``seqzoo.layers.recurrent.InputTable``). Returns the model."""
        self.model.input_table.set_policy(policy)
        return self
