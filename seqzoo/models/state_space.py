"""What the Mamba and Mamba-2 language models share (seqzoo/models/mamba, seqzoo/models/mamba2): the pre-norm
residual block around their state-space mixer, mamba_ssm's initialisation, and the backbone, numerically aligned
with transformers' MambaForCausalLM / Mamba2ForCausalLM (same block, norms, residual precision and parameter layouts;
see seqzoo/conversions/hf_mamba.py). The two differ only in the mixer (``seqzoo/layers/mamba.py``,
``seqzoo/layers/mamba2.py``) and their configs.

The state of every layer (``conv`` and ``ssm``) lives in a :class:`~seqzoo.cache.SeqzooCache`, so decoding costs
O(1) per token.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast

from seqzoo.cache import unchanged_on_error
from seqzoo.layers.mixer import Block, Mixer, build_mixer
from seqzoo.layers.norms import RMSNorm
from seqzoo.models.compat import as_returned, model_output
from seqzoo.models.inputs import note_no_attention_weights, prepare_inputs, resolve_output_flags
from seqzoo.models.modeling_utils import SeqzooPreTrainedModel, backbone_cache_argument
from seqzoo.models.packing import find_packing


class StateSpaceBlock(Block):
    """x + mixer(RMSNorm(x)); the residual stream stays in float32 when ``residual_in_fp32`` (as in transformers).
    A subclass names its mixer (``mixer_class``)."""

    mixer_class: ClassVar[type[Mixer]]

    def __init__(self, config: Any, layer_idx: int) -> None:
        super().__init__(
            build_mixer(self.mixer_class, config, layer_idx),
            norm=RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon),
            residual_in_fp32=config.residual_in_fp32,
        )


class StateSpacePreTrainedModel(SeqzooPreTrainedModel):
    """mamba_ssm's initialisation: normal embeddings, unit norms, and the mixer's own (torch's default for its
    projections and convolution, then A / D / the time step's; Mamba-2's gated norm)."""

    supports_gradient_checkpointing = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif module is getattr(self, "lm_head", None) and not self.config.tie_word_embeddings:
            # An untied head: torch.nn.Linear's default, which a fresh model's head has from its constructor. A
            # checkpoint without one (saved by a classifier) gets it here, not the loader's uninitialised memory.
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))


class StateSpaceModel(StateSpacePreTrainedModel):
    """Embedding -> [RMSNorm -> state-space mixer, residual] x N -> RMSNorm. A subclass names its block
    (``block_class``) and comes after its architecture's pre-trained-model class among its bases, which sets the
    config class."""

    block_class: ClassVar[type[StateSpaceBlock]]

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(self.block_class(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
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
        cache: a :class:`~seqzoo.cache.SeqzooCache` to continue from (``cache_params``, the name transformers'
            Mamba and Mamba-2 used, and ``past_key_values`` are accepted too).
        """
        cache = backbone_cache_argument(self, cache, kwargs)
        note_no_attention_weights(self, kwargs)
        packing = find_packing(self, input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, kwargs)
        reset = None  # several documents in a row: each runs alone (see seqzoo/models/packing.py)
        if packing is not None:
            if not packing.takes_resets(self):
                output = packing.run(self, input_ids, inputs_embeds, output_hidden_states, kwargs)
                return as_returned(self, output, return_dict)
            reset, use_cache = packing.starts, False
        use_cache, output_hidden_states = resolve_output_flags(self, use_cache, output_hidden_states)
        inputs = prepare_inputs(self, input_ids, inputs_embeds, attention_mask, cache, use_cache)
        cache, mask = inputs.cache, inputs.padding_mask

        hidden_states = inputs.embeds  # (B, T, H)
        all_hidden_states = () if output_hidden_states else None  # the input of every layer, then the output
        with unchanged_on_error(cache):  # (a layer that fails leaves the cache as it was)
            for idx, layer in enumerate(self.layers):
                if output_hidden_states:
                    all_hidden_states += (hidden_states,)
                state = cache.layer(idx) if cache is not None else None
                # (float32 if residual_in_fp32)
                hidden_states, state = layer(hidden_states, state=state, mask=mask, reset=reset)
                if cache is not None:
                    cache.update_layer(idx, state)
        if cache is not None:
            cache.advance(inputs.length)
        # Normalise the (possibly float32) residual stream, then return to the model's dtype for the head.
        hidden_states = self.norm(hidden_states).to(self.norm.weight.dtype)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)  # after the final norm, as transformers' models do
        output = model_output(
            BaseModelOutputWithPast, cache=cache, last_hidden_state=hidden_states, hidden_states=all_hidden_states
        )
        return as_returned(self, output, return_dict)
