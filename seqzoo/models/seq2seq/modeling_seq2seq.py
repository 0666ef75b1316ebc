"""Encoder-decoder models as transformers' ``AutoModelForSeq2SeqLM``: RNN / LSTM / GRU encoder-decoders with
Sutskever's bridge, Bahdanau's or Luong's attention (``recurrent.py``), and the Vaswani Transformer
(``transformer.py``).

``generate()`` runs the encoder once per source (``get_encoder``), repeats its output for beams and returned
sequences, and calls ``forward`` with ``encoder_outputs``, the source ``attention_mask``, the new
``decoder_input_ids`` and the decoding cache, which holds the decoder's state and whatever it computed from the
source once (the attention's keys). Beam search reorders the cache like any other. ``labels`` are shifted right
into ``decoder_input_ids`` (``decoder_start_token_id`` first, -100 as padding) as transformers' seq2seq models do.
"""

from __future__ import annotations

import copy
import inspect
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.modeling_outputs import Seq2SeqLMOutput, Seq2SeqModelOutput

from seqzoo.cache import unchanged_on_error
from seqzoo.layers.positions import SinusoidalPositions, sinusoidal_table
from seqzoo.models.compat import (
    GENERATE_CACHE_KWARG,
    as_returned,
    check_kwargs,
    model_output,
    output_cache,
    take_cache,
)
from seqzoo.models.generation import (
    cache_expanded_for_generation,
    check_cache_implementation,
    check_continued_cache,
    check_generate_cache,
    check_generate_tensors,
    check_read_mask,
    drop_generate_only_inputs,
    explained_assisted_refusal,
    generate_eos_ids,
    generate_pad_id,
    generation_settings,
    mark_beam_search_cache,
    mask_from_pad_token,
    prompt_read_mask,
    record_read_mask,
    refuse_continuous_batching,
)
from seqzoo.models.generation_setup import PreparedGeneration
from seqzoo.models.inputs import (
    cache_under_checkpointing,
    check_flag,
    check_label_range,
    check_mask_values,
    prepare_inputs,
    resolve_output_flags,
    resolved_return_dict,
)
from seqzoo.models.modeling_utils import SeqzooPreTrainedModel, forward_parameters

from .configuration_seq2seq import Seq2SeqConfig
from .outputs import Seq2SeqEncoderOutput
from .recurrent import CheckpointedStack, RecurrentDecoder, RecurrentEncoder, check_sources_not_empty
from .transformer import TransformerDecoder, TransformerEncoder

logger = logging.getLogger("seqzoo")


class Seq2SeqPreTrainedModel(SeqzooPreTrainedModel):
    config_class = Seq2SeqConfig
    main_input_name = "input_ids"
    _no_split_modules = ["EncoderLayer", "DecoderLayer", "RNNMixer", "LSTMMixer", "GRUMixer"]  # see post_init
    _supports_sdpa = True
    supports_gradient_checkpointing = True
    extra_forward_kwargs = ()  # an encoder-decoder takes no packed rows

    def _set_gradient_checkpointing(self, enable: bool = True, *args: Any, **kwargs: Any) -> None:
        # transformers switches its flag on every module that has one (the encoder and decoder stacks here, which
        # checkpoint their layers themselves) and applies every_n_layers to GradientCheckpointingLayer blocks only.
        super()._set_gradient_checkpointing(enable, *args, **kwargs)
        for module in self.modules():
            if isinstance(module, CheckpointedStack):
                module.checkpoint_every_n_layers = kwargs.get("every_n_layers", 1)

    def post_init(self) -> None:
        # FSDP's wrap units (TRANSFORMER_BASED_WRAP) are the classes this config builds: accelerate refuses a model
        # that lacks a class its _no_split_modules names. A recurrent encoder holds the embedding the decoder
        # shares, and FSDP cannot split a shared parameter between units, so its recurrent layers are the units.
        if self.config.is_transformer:
            self._no_split_modules = ["EncoderLayer", "DecoderLayer"]
        else:
            self._no_split_modules = sorted({type(layer).__name__ for module in self.modules()
                                             if isinstance(module, (RecurrentEncoder, RecurrentDecoder))
                                             for layer in module.layers})
        super().post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # The recurrent mixers initialise themselves (super). Embeddings: normal(0, initializer_range). Other
        # linear layers: torch.nn's default U(+-1/sqrt(fan_in)) in recurrent models; Xavier-uniform in the
        # Transformer, as in Vaswani et al.'s reference code. A tied output layer takes the embedding's weight.
        super()._init_weights(module)
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, nn.Linear):
            if self.config.is_transformer:
                init.xavier_uniform_(module.weight)
            else:
                bound = 1.0 / module.in_features**0.5
                init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, SinusoidalPositions):
            init.copy_(module.table, sinusoidal_table(*module.table.shape, dtype=module.table.dtype))


class Seq2SeqModel(Seq2SeqPreTrainedModel):
    """Encoder + decoder, sharing one token embedding (owned by the encoder). Returns the decoder's output."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__(config)
        embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        if config.is_transformer:
            self.encoder = TransformerEncoder(config, embed_tokens)
            self.decoder = TransformerDecoder(config)
        else:
            self.encoder = RecurrentEncoder(config, embed_tokens)
            self.decoder = RecurrentDecoder(config)
        self.decoder.share_embedding(self.encoder)
        self.post_init()

    @property
    def embed_tokens(self) -> nn.Embedding:
        # The decoder's inputs are embedded with the encoder's table (read by prepare_inputs).
        return self.encoder.embed_tokens

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.encoder.embed_tokens = value

    def get_encoder(self, modality: str | None = None) -> nn.Module:
        return self.encoder

    def get_decoder(self) -> nn.Module:
        return self.decoder

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Seq2SeqModelOutput:
        r"""
        encoder_outputs: what the encoder returned for this source (``generate()`` passes it on every step), as a
            ``Seq2SeqEncoderOutput`` or the tuple ``(last_hidden_state, final_state)``; computed from
            ``input_ids`` when None.
        cache: the decoding state to continue from (``past_key_values`` and ``cache_params`` are older names).
        """
        cache = take_cache(cache, kwargs)
        check_kwargs(kwargs, forward_parameters(self), f"{type(self).__name__}.forward")
        use_cache, output_hidden_states = resolve_output_flags(self, use_cache, output_hidden_states)
        check_flag("output_attentions", output_attentions)
        output_attentions = bool(output_attentions)
        use_cache = cache_under_checkpointing(
            self, self.decoder.gradient_checkpointing and self.training and torch.is_grad_enabled(), cache, use_cache)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                           inputs_embeds=inputs_embeds, output_attentions=output_attentions,
                                           output_hidden_states=output_hidden_states, return_dict=True)
        encoder_outputs = _as_encoder_output(encoder_outputs)
        memory = encoder_outputs.last_hidden_state  # (B, S, D)
        width = self.config.hidden_size if self.config.is_transformer else self.config.annotation_size
        if memory.dim() != 3 or memory.shape[-1] != width:
            raise ValueError(f"encoder_outputs.last_hidden_state of shape {tuple(memory.shape)} is not this model's "
                             f"encoder output: expected (batch, source_length, {width})")
        source_mask = _source_mask(attention_mask, memory)

        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError(f"{type(self).__name__} needs the decoder's inputs: pass decoder_input_ids (or "
                             "decoder_inputs_embeds), or labels to the ForConditionalGeneration head, which shifts "
                             "them into decoder_input_ids")
        if decoder_input_ids is not None and decoder_inputs_embeds is not None:
            raise ValueError("pass exactly one of decoder_input_ids or decoder_inputs_embeds (generate() makes "
                             "decoder_input_ids itself, from the decoder's start token, so it takes no "
                             "decoder_inputs_embeds: give a decoder prompt as decoder_input_ids)")
        try:
            inputs = prepare_inputs(self, decoder_input_ids, decoder_inputs_embeds, decoder_attention_mask, cache,
                                    use_cache)
        except ValueError as err:
            raise ValueError(f"decoder inputs: {err}") from err
        if inputs.embeds.shape[0] != memory.shape[0]:
            raise ValueError(f"the decoder inputs hold {inputs.embeds.shape[0]} sequence(s) but the source "
                             f"{memory.shape[0]}; pass one decoder sequence per source")
        cache = inputs.cache
        # A recurrent decoder starts from the bridge and the source's keys; the Transformer's cache layers fill
        # themselves on the first step.
        if cache is not None and (inputs.past_length > 0 or self.config.is_transformer):
            entries = [cache.layer(i) for i in range(len(self.config.cache_layer_kinds))]
        else:
            entries = self.decoder.start(encoder_outputs)
        with unchanged_on_error(cache):  # (a Transformer decoder's layers grow their keys and values as they run)
            decoded = self.decoder(inputs, memory, source_mask, entries, output_attentions, output_hidden_states)
        if cache is not None:
            for idx, entry in enumerate(decoded.cache_entries):
                cache.update_layer(idx, entry)
            cache.advance(inputs.length)
        output = model_output(
            Seq2SeqModelOutput,
            cache=cache,  # (a cache passed is returned, advanced, whatever use_cache says: as the causal LMs do)
            last_hidden_state=decoded.output,
            decoder_hidden_states=decoded.hidden_states,
            decoder_attentions=decoded.self_attentions,
            cross_attentions=decoded.cross_attentions,
            encoder_last_hidden_state=memory,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return as_returned(self, output, return_dict)


def _as_encoder_output(encoder_outputs: Any) -> Seq2SeqEncoderOutput:
    if isinstance(encoder_outputs, Seq2SeqEncoderOutput):
        return encoder_outputs
    if isinstance(encoder_outputs, (tuple, list)) and encoder_outputs and torch.is_tensor(encoder_outputs[0]):
        # The encoder's tuple holds the fields that are set, in order: a recurrent encoder's final state is a tensor,
        # the per-layer fields are tuples (a Transformer encoder's hidden states came second, read as a final state).
        first, *rest = encoder_outputs
        fields: dict[str, Any] = {"last_hidden_state": first}
        if rest and (rest[0] is None or torch.is_tensor(rest[0])):
            fields["final_state"] = rest.pop(0)
        if len(rest) > 2 or not all(value is None or isinstance(value, (tuple, list)) for value in rest):
            raise ValueError("encoder_outputs as a tuple must be (last_hidden_state[, final_state][, hidden_states]"
                             f"[, attentions]), as this model's encoder returns it; got {len(encoder_outputs)} values "
                             f"of types {', '.join(type(value).__name__ for value in encoder_outputs)}")
        names = ["hidden_states", "attentions"]
        if len(rest) == 1 and _attention_weights(rest[0]):
            names.pop(0)  # (the attentions alone: per-layer (B, heads, T, S) weights, where hidden states are 3-d)
        fields.update(zip(names, rest))
        return Seq2SeqEncoderOutput(**fields)
    raise ValueError(f"encoder_outputs must be what this model's encoder returned (a Seq2SeqEncoderOutput, or the "
                     f"tuple (last_hidden_state, final_state)); got {type(encoder_outputs).__name__}")


def _attention_weights(per_layer: Any) -> bool:
    """Whether a per-layer tuple of an encoder's outputs holds attention weights (4-d), not hidden states (3-d)."""
    first = next((value for value in per_layer or () if value is not None), None)
    return torch.is_tensor(first) and first.dim() == 4


def _source_mask(attention_mask: torch.Tensor | None, memory: torch.Tensor) -> torch.Tensor | None:
    """The source's padding mask (B, S) bool, None when nothing is padded; a row with no real token is refused."""
    if attention_mask is None:
        return None
    if attention_mask.shape != memory.shape[:2]:
        raise ValueError(f"attention_mask of shape {tuple(attention_mask.shape)} does not fit the source of shape "
                         f"{tuple(memory.shape[:2])}: pass the source's (batch, source_length) 0/1 mask")
    # (its values are checked here too: the encoder, which checks them, is not run when encoder_outputs are passed)
    if not torch.compiler.is_compiling() and check_mask_values(attention_mask):
        return None
    mask = attention_mask.to(torch.bool)
    if not torch.compiler.is_compiling() and bool(mask.all()):
        return None
    # The encoder refuses an empty source, but is not run when encoder_outputs are passed.
    check_sources_not_empty(mask)
    return mask


class Seq2SeqForConditionalGeneration(Seq2SeqPreTrainedModel, PreparedGeneration, GenerationMixin):
    """The encoder-decoder with a linear layer over the vocabulary (tied to the embedding unless
    ``tie_word_embeddings=False``); ``AutoModelForSeq2SeqLM``."""

    head_modules = ("lm_head",)
    _tied_weights_keys = {"lm_head.weight": "model.encoder.embed_tokens.weight"}

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__(config)
        self.model = Seq2SeqModel(config)
        self.lm_head = nn.Linear(config.output_dim, config.vocab_size, bias=False)
        self.post_init()

    def get_encoder(self, modality: str | None = None) -> nn.Module:
        return self.model.encoder

    def get_decoder(self) -> nn.Module:
        return self.model.decoder

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` shifted right (what DataCollatorForSeq2Seq asks for)."""
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Seq2SeqLMOutput | tuple:
        r"""
        input_ids, attention_mask: the source (B, S) and its 0/1 padding mask (left or right padding).
        decoder_input_ids, decoder_attention_mask: the decoder's inputs (B, T); from ``labels`` when None.
        labels: (B, T) target token ids, -100 where nothing is scored; the loss is their mean cross-entropy.
        encoder_outputs: the encoder's output for this source (``generate()`` computes it once and passes it on).
        cache: the decoding state (``past_key_values`` / ``cache_params`` accepted as older names).
        output_attentions: return ``cross_attentions``, the attention weights over the source (per attention layer,
            (B, heads, T, S); a recurrent decoder has one layer and one head), and the Transformer's self-attention
            weights as ``encoder_attentions`` / ``decoder_attentions``.
        kwargs: only what :data:`seqzoo.models.compat.PASSTHROUGH_KWARGS` lists; anything else raises.
        """
        cache = take_cache(cache, kwargs)
        check_kwargs(kwargs, forward_parameters(self), f"{type(self).__name__}.forward")
        return_dict = resolved_return_dict(self, return_dict)
        if labels is not None:
            self._check_labels(labels)
            labels = labels.long()  # (int32 ids too: the loss takes int64)
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        with unchanged_on_error(cache):  # (the head and the loss too: see SeqzooForCausalLM.forward)
            outputs = self.model(
                input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs, cache=cache,
                inputs_embeds=inputs_embeds, decoder_inputs_embeds=decoder_inputs_embeds, use_cache=use_cache,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
            )
            logits = self.lm_head(outputs.last_hidden_state)  # (B, T, V)
            loss = None
            if labels is not None:
                if labels.shape != logits.shape[:2]:
                    raise ValueError(f"labels of shape {tuple(labels.shape)} do not fit the decoder inputs of shape "
                                     f"{tuple(logits.shape[:2])}: pass one label per decoder position")
                loss = _token_loss(logits, labels, kwargs.get("num_items_in_batch"))
        new_cache = output_cache(outputs)
        output = model_output(
            Seq2SeqLMOutput,
            cache=new_cache,
            loss=loss,
            logits=logits,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )
        return output if return_dict else output.to_tuple()  # (the fields set, in order)

    def _check_labels(self, labels: torch.Tensor) -> None:
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a tensor; got {type(labels).__name__}")
        if (labels.dim() != 2 or labels.dtype.is_floating_point or labels.dtype.is_complex
                or labels.dtype == torch.bool):
            raise ValueError(f"labels must be integer token ids of shape (batch, target_length); got a "
                             f"{labels.dtype} tensor of shape {tuple(labels.shape)}")
        if labels.shape[1] == 0:
            raise ValueError(f"labels of shape {tuple(labels.shape)} hold no target position: pass at least one "
                             "target token per row (-100 where a position is not scored)")
        check_label_range(labels, self.config.vocab_size, "vocab_size", "token ids")

    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        check_continued_cache(self, args, kwargs)
        return drop_generate_only_inputs(super().prepare_inputs_for_generation(*args, **kwargs))

    # generate() validates its keyword arguments against this method's signature: keep transformers' own.
    prepare_inputs_for_generation.__signature__ = inspect.signature(GenerationMixin.prepare_inputs_for_generation)

    init_continuous_batching = refuse_continuous_batching

    def generate(self, *args: Any, cache: Any = None, **kwargs: Any) -> Any:
        """transformers' ``generate``; a cache to continue from may be passed as ``cache`` on every supported
        release (or under its older names ``past_key_values`` / ``cache_params``)."""
        check_generate_tensors(self, args, kwargs)
        cache = take_cache(cache, kwargs)
        config = generation_settings(self, args, kwargs)
        check_cache_implementation(self, config, kwargs)
        check_generate_cache(self, cache, config, kwargs)
        read = prompt_read_mask(self, args, kwargs, config)
        checked = check_read_mask(self, cache, read)
        if kwargs.get("encoder_outputs") is not None:
            # As this model's encoder output (transformers reads a tuple's batch size as 1), and a copy: transformers
            # repeats its tensors for beams and returned sequences in place, so the caller's grew at every call.
            kwargs["encoder_outputs"] = copy.copy(_as_encoder_output(kwargs["encoder_outputs"]))
        source_mask_from_padding(self, config, args, kwargs)
        check_decoder_prompt_batch(args, kwargs)
        if cache is not None:
            kwargs[GENERATE_CACHE_KWARG] = cache
        with cache_expanded_for_generation(cache, config, args, kwargs), explained_assisted_refusal(self):
            result = super().generate(*args, **kwargs)
        record_read_mask(cache if cache is not None else output_cache(result), read, checked, result, config, kwargs)
        return mark_beam_search_cache(result, cache, config, kwargs)


def check_decoder_prompt_batch(args: tuple, kwargs: dict[str, Any]) -> None:
    """Refuse ``decoder_input_ids`` (a decoder prompt) of another batch size than the source's, as the forward
    refuses it, before transformers' set-up meets it in a concatenation with the start tokens (torch's size error)."""
    prompt = kwargs.get("decoder_input_ids")
    encoded = kwargs.get("encoder_outputs")
    source = args[0] if args else next((kwargs[name] for name in ("input_ids", "inputs", "inputs_embeds")
                                        if kwargs.get(name) is not None), None)
    if source is None:  # (generate() has made encoder_outputs this model's output object by now)
        source = getattr(encoded, "last_hidden_state", None)
    if (isinstance(prompt, torch.Tensor) and prompt.dim() == 2 and isinstance(source, torch.Tensor)
            and source.dim() >= 2 and prompt.shape[0] != source.shape[0]):
        raise ValueError(f"generate(): decoder_input_ids hold {prompt.shape[0]} sequence(s) but the source "
                         f"{source.shape[0]}; pass one decoder prompt per source")


def source_mask_from_padding(model: nn.Module, config: Any, args: tuple, kwargs: dict[str, Any]) -> None:
    """A source of token ids passed to ``generate()`` without an ``attention_mask``: where it holds the pad token,
    and the pad token is not an EOS token, the mask of its other tokens (into ``kwargs``), as transformers infers a
    decoder-only model's prompt mask. transformers' ``generate()`` infers none for an encoder-decoder, so a padded
    batch of sources was encoded with its padding, and each padded row gave other tokens than alone."""
    ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
    if (kwargs.get("attention_mask") is not None or kwargs.get("encoder_outputs") is not None
            or type(ids) is not torch.Tensor or ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64)):
        return
    pad = generate_pad_id(kwargs, config)
    if pad is not None:
        mask = mask_from_pad_token(ids, pad, generate_eos_ids(kwargs, config))
        if mask is not None:
            kwargs["attention_mask"] = mask


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int | None, decoder_start_token_id: int | None):
    """``[start, y_1, ..., y_{T-1}]`` from ``[y_1, ..., y_T]``, -100 replaced by the pad token (transformers'
    rule for seq2seq models)."""
    if decoder_start_token_id is None:
        raise ValueError("config.decoder_start_token_id (or bos_token_id) must be set to shift labels into "
                         "decoder_input_ids")
    ignored = labels == -100
    if labels.dim() == 2 and labels.shape[1] > 1 and not torch.compiler.is_compiling():
        # -100 first and a scored label last: a left-padded row (DataCollatorForSeq2Seq pads labels on the
        # tokenizer's padding_side, seqzoo's byte tokenizer's is "left"). Shifted, it would feed the decoder pad
        # tokens between the start token and the target, which it never sees when generating.
        left_padded = (ignored[:, 0] & ~ignored[:, -1]).nonzero().flatten().tolist()
        if left_padded:
            raise ValueError(f"labels row(s) {left_padded[:8]} are left-padded (-100 before the target): shifted "
                             "into decoder_input_ids they would put pad tokens between the decoder's start token "
                             "and the target. Pad labels on the right (tokenizer.padding_side = 'right' before "
                             "DataCollatorForSeq2Seq), or pass decoder_input_ids and decoder_attention_mask")
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    holes = shifted == -100
    if pad_token_id is None:
        # (read only outside a trace, as the checks above: a compiled forward takes pad_token_id from the config)
        if not torch.compiler.is_compiling() and bool(holes.any()):
            raise ValueError("labels hold -100 (ignored positions), which become the pad token in "
                             "decoder_input_ids: set config.pad_token_id")
        return shifted
    return shifted.masked_fill(holes, pad_token_id)  # (without reading the tensor: torch.compile traces it whole)


def _token_loss(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Mean cross-entropy over the scored labels; with ``num_items_in_batch`` (Trainer under gradient
    accumulation), the sum divided by it."""
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (a float64 model's loss in float64)
    flat_logits, flat_labels = wide.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device)
    if num_items_in_batch is None:
        return F.cross_entropy(flat_logits, flat_labels, ignore_index=-100)
    total = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="sum")
    return total / torch.as_tensor(num_items_in_batch, device=total.device)


__all__ = ["Seq2SeqForConditionalGeneration", "Seq2SeqModel", "Seq2SeqPreTrainedModel", "shift_tokens_right"]
