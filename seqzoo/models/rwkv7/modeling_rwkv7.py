"""RWKV-7 ("x070") backbone and causal LM: embedding -> ln0 -> [ln1 -> time mix, ln2 -> channel mix] x L -> ln_out.

Numerically this is the published reference (RWKV-LM ``RWKV-v7/rwkv_v7_demo.py``); tests/models/
test_rwkv7_reference.py checks it against an independent per-token re-statement of the formulas. The O(1) state of
each layer lives in a :class:`~seqzoo.cache.SeqzooCache` under ``attn_shift``, ``wkv`` and ``ffn_shift``. The
cross-layer ``v_first`` (layer 0's values) is not state: every forward recomputes it from layer 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast

from seqzoo.cache import SeqzooCache, unchanged_on_error
from seqzoo.layers.mixer import Block, SharedValues, build_mixer
from seqzoo.layers.rwkv7 import RWKV7ChannelMix, RWKV7TimeMix
from seqzoo.layers.rwkv7_step import step_blocks
from seqzoo.models.compat import as_returned, model_output
from seqzoo.models.decode_plan import plannable
from seqzoo.models.decode_step import finish_decode_step, is_plain_decode_step, prepare_step_inputs
from seqzoo.models.heads import SeqzooForSequenceClassification, SeqzooForTokenClassification
from seqzoo.models.inputs import note_no_attention_weights, prepare_inputs, resolve_output_flags
from seqzoo.models.modeling_utils import SeqzooForCausalLM, SeqzooPreTrainedModel, backbone_cache_argument
from seqzoo.models.packing import find_packing

from .configuration_rwkv7 import RWKV7Config
from .step_plan import RWKV7StepPlan


class RWKV7Block(Block):
    """``ln1 -> time mix -> residual -> ln2 -> channel mix -> residual``; the channel mix carries a token-shift
    state, so the layer's state holds ``attn_shift``, ``wkv`` and ``ffn_shift``."""

    part_names = ("attn_norm", "attn", "ffn_norm", "ffn")

    def __init__(self, config: RWKV7Config, layer_idx: int) -> None:
        super().__init__(
            build_mixer(RWKV7TimeMix, config, layer_idx),
            norm=nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps),  # reference: ln1
            mlp=RWKV7ChannelMix(config, layer_idx),
            mlp_norm=nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps),  # reference: ln2
        )


# As defined (transformers wraps a layer's forward per class): a forward replaced on the class since, by a library or
# a user, is called, never skipped by the decode step.
_BLOCK_FORWARD = RWKV7Block.forward


class RWKV7PreTrainedModel(SeqzooPreTrainedModel):
    config_class = RWKV7Config
    supports_gradient_checkpointing = True
    _no_split_modules = ["RWKV7Block"]

    def _init_weights(self, module: nn.Module) -> None:
        """The RWKV-LM x070 init (the time and channel mixes initialise themselves), with a tiny embedding and an
        orthogonal head, as train.py builds the initial checkpoint."""
        super()._init_weights(module)
        config = self.config
        if isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            if config.tie_word_embeddings:
                # The shared matrix serves as the head too, where its init matters; ln0 makes the embedding's
                # scale irrelevant.
                _init_head(module.weight, config)
            else:
                # A tiny embedding (ln0 normalises it anyway) lets the embedding learn fast (RWKV-LM README).
                init.uniform_(module.weight, -1e-4, 1e-4)
        elif module is getattr(self, "lm_head", None) and not config.tie_word_embeddings:
            # Matched by identity: transformers skips modules without parameters of their own (the CausalLM
            # itself), so the head is initialised when the nn.Linear is visited, with self the CausalLM.
            _init_head(module.weight, config)


def _init_head(weight: torch.Tensor, config: RWKV7Config) -> None:
    vocab, hidden = config.vocab_size, config.hidden_size
    init.orthogonal_(weight, gain=0.5 * math.sqrt(vocab / hidden) if vocab > hidden else 0.5)


class RWKV7Model(RWKV7PreTrainedModel):
    """Embedding -> LayerNorm (ln0) -> [RWKV-7 block: time mix, channel mix] x N -> LayerNorm (ln_out)."""

    def __init__(self, config: RWKV7Config) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)  # reference: emb
        self.embed_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # reference: blocks.0.ln0
        self.layers = nn.ModuleList(RWKV7Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # reference: ln_out
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
        cache, mask = inputs.cache, inputs.padding_mask

        hidden_states = self.embed_norm(inputs.embeds)  # (B, T, C)
        all_hidden_states = () if output_hidden_states else None  # the input of every layer, then the output
        shared = SharedValues()  # layer 0's values (v_first), for the value residual of the others
        with unchanged_on_error(cache):  # (a layer that fails leaves the cache as it was)
            for idx, layer in enumerate(self.layers):
                if output_hidden_states:
                    all_hidden_states += (hidden_states,)
                state = cache.layer(idx) if cache is not None else None
                hidden_states, state = layer(hidden_states, state=state, mask=mask, shared=shared, reset=reset)
                if cache is not None:
                    cache.update_layer(idx, state)
        hidden_states = self.norm(hidden_states)
        if cache is not None:
            cache.advance(inputs.length)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)  # after the final norm, as transformers' models do
        output = model_output(
            BaseModelOutputWithPast, cache=cache, last_hidden_state=hidden_states, hidden_states=all_hidden_states
        )
        return as_returned(self, output, return_dict)

    def takes_step(self, input_ids: Any, inputs_embeds: Any, cache: Any, output_hidden_states: bool | None,
                   kwargs: dict[str, Any]) -> bool:
        """Whether a forward call (with no packed rows) is the common decode step :meth:`decode_step` runs."""
        return is_plain_decode_step(self, _MODEL_FORWARD, input_ids, inputs_embeds, cache, output_hidden_states,
                                    kwargs)

    def decode_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    cache: SeqzooCache) -> torch.Tensor:
        """The forward of a call :meth:`takes_step` accepts, without the general plumbing: the same checks and
        errors, then every block in TorchScript (``layers/rwkv7_step.py: step_blocks``), or the blocks one by one
        where that declines. Returns the (B, 1, C) output of the final norm; ``cache`` holds the new states and has
        advanced by one position."""
        embeds, mask = prepare_step_inputs(self, input_ids, attention_mask, cache)
        hidden_states = self.embed_norm(embeds)
        states = [cache.layer(i) for i in range(len(self.layers))]
        stepped = step_blocks(self.layers, RWKV7Block, _BLOCK_FORWARD, hidden_states, states, mask)
        hidden_states = finish_decode_step(cache, self.layers, stepped, hidden_states, states, mask,
                                           shared=SharedValues())
        return self.norm(hidden_states)


    def plan_steps(self, lm: nn.Module, cache: SeqzooCache) -> RWKV7StepPlan | None:
        """After a general forward of ``lm`` (this backbone's causal LM) without gradients on ``cache`` (a prefill or
        a decode step): the plan of the cache's later decode steps (``step_plan.py``), or None where they would not
        run what a plan runs, or where this class's ``forward``, :meth:`takes_step` or :meth:`decode_step` is not its
        own as defined (a subclass's, or one put on the class or the instance since: the plan stands in for them)."""
        if not plannable(self, (_MODEL_FORWARD, _MODEL_TAKES_STEP, _MODEL_DECODE_STEP)):
            return None
        return RWKV7StepPlan.build(lm, self, cache, RWKV7Block, _BLOCK_FORWARD)


# As defined: one replaced on the class since is called (takes_step), and a plan is made only for these (plan_steps).
_MODEL_FORWARD = RWKV7Model.forward
_MODEL_TAKES_STEP = RWKV7Model.takes_step
_MODEL_DECODE_STEP = RWKV7Model.decode_step


class RWKV7ForCausalLM(RWKV7PreTrainedModel, SeqzooForCausalLM):
    base_model_class = RWKV7Model


class RWKV7ForSequenceClassification(RWKV7PreTrainedModel, SeqzooForSequenceClassification):
    base_model_class = RWKV7Model


class RWKV7ForTokenClassification(RWKV7PreTrainedModel, SeqzooForTokenClassification):
    base_model_class = RWKV7Model


__all__ = [
    "RWKV7ForCausalLM",
    "RWKV7ForSequenceClassification",
    "RWKV7ForTokenClassification",
    "RWKV7Model",
    "RWKV7PreTrainedModel",
]
