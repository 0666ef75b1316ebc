"""Backbone and causal LM of the classic recurrent language model (shared by RNN, LSTM and GRU)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast

from seqzoo.layers.recurrent import RecurrentLayer, STATE_NAMES
from seqzoo.models.modeling_utils import (
    SeqzooForCausalLM,
    SeqzooPreTrainedModel,
    check_inputs,
    new_recurrent_cache,
    resolve_output_flags,
    padding_mask_for,
)


class ClassicRecurrentPreTrainedModel(SeqzooPreTrainedModel):
    _no_split_modules = ["RecurrentLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        config = self.config
        if isinstance(module, RecurrentLayer):
            bound = input_bound = 1.0 / module.hidden_size**0.5
            if config.tie_word_embeddings and module is getattr(self, "model", self).layers[-1]:
                # The decoder is tied to the N(0, 1) embedding, so an O(1) top-layer state would give logits of
                # std ~sqrt(hidden_size) and a first loss far above ln(vocab_size) (29 nats for rnn-small). The
                # top layer's input weights start hidden_size times smaller: its state starts near 0, the first
                # loss at ln(vocab_size), and the first updates wake the layer (the lab's text models reach the
                # same perplexity in 250 steps as with the full-size init). Not zero: the gradient keeps a path
                # to every input at initialisation.
                input_bound /= module.hidden_size
            init.uniform_(module.weight_ih, -input_bound, input_bound)
            if config.orthogonal_init:
                # One orthogonal matrix per gate block keeps each gate's recurrence norm-preserving at init.
                blocks = [init.orthogonal_(torch.empty(module.hidden_size, module.hidden_size))
                          for _ in range(module.weight_hh.shape[0] // module.hidden_size)]
                init.copy_(module.weight_hh, torch.cat(blocks, dim=0))
            else:
                init.uniform_(module.weight_hh, -bound, bound)
            if module.bias_ih is not None:
                init.zeros_(module.bias_ih)
                bias_hh = torch.zeros_like(module.bias_hh)
                forget_bias = getattr(config, "forget_bias", 0.0)
                if module.cell == "lstm" and forget_bias:
                    # Gate order i, f, g, o: a positive forget bias lets gradients flow early in training
                    # (Gers et al. 2000; Jozefowicz et al. 2015).
                    bias_hh[module.hidden_size : 2 * module.hidden_size] = forget_bias
                init.copy_(module.bias_hh, bias_hh)
        elif isinstance(module, nn.Embedding):
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
        sizes = [config.embedding_size] + [config.hidden_size] * config.num_hidden_layers
        self.layers = nn.ModuleList(
            RecurrentLayer(config.cell, sizes[i], sizes[i + 1], nonlinearity=getattr(config, "nonlinearity", "tanh"))
            for i in range(config.num_hidden_layers)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        _, length = check_inputs(self.config, input_ids, inputs_embeds, attention_mask)
        use_cache, output_hidden_states = resolve_output_flags(self, use_cache, output_hidden_states)
        cache = new_recurrent_cache(self.config, past_key_values, use_cache or past_key_values is not None)
        mask = padding_mask_for(attention_mask, length)

        hidden_states = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        hidden_states = self.dropout(hidden_states)  # (B, T, E)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for idx, layer in enumerate(self.layers):
            state = None
            if cache is not None and cache.get(idx, "h") is not None:
                state = {name: cache.get(idx, name) for name in STATE_NAMES[layer.cell]}
            hidden_states, new_state = layer(hidden_states, state, mask)  # (B, T, H)
            hidden_states = self.dropout(hidden_states)
            if cache is not None:
                for name, value in new_state.items():
                    cache.set(idx, name, value)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        if cache is not None:
            cache.advance(length)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, past_key_values=cache, hidden_states=all_hidden_states
        )


class ClassicRecurrentForCausalLM(ClassicRecurrentPreTrainedModel, SeqzooForCausalLM):
    base_model_class = ClassicRecurrentModel
