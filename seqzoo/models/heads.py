"""Task heads shared by every architecture: sequence classification and token classification, following
transformers' conventions (``num_labels``, ``id2label`` / ``label2id``, ``problem_type`` single-label / multi-label /
regression, ``labels`` giving the loss, -100 ignored when tagging).

Each architecture declares ``<Arch>ForSequenceClassification`` and ``<Arch>ForTokenClassification`` as its
``PreTrainedModel`` plus one of these, with ``base_model_class`` naming its backbone; the registry registers them
with ``AutoModelForSequenceClassification`` / ``AutoModelForTokenClassification``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from seqzoo.models.compat import check_kwargs
from seqzoo.models.configuration_utils import POOLINGS, PROBLEM_TYPES, require_choice
from seqzoo.models.inputs import check_label_range, float64_token_loss, index_labels, resolved_return_dict
from seqzoo.models.modeling_utils import SeqzooPreTrainedModel, forward_parameters
from seqzoo.models.packing import find_packing


class _ClassifierHead(SeqzooPreTrainedModel):
    """Backbone (``self.model``) + linear ``score`` over ``num_labels``; no decoding cache."""

    base_model_class: type[nn.Module]
    head_modules = ("score",)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = self.base_model_class(config)
        self.dropout = nn.Dropout(config.classifier_dropout or 0.0)
        self.score = nn.Linear(self.feature_size(config), config.num_labels, bias=False)
        self.post_init()

    def feature_size(self, config: Any) -> int:
        return config.output_dim

    def _run_backbone(self, input_ids, attention_mask, position_ids, inputs_embeds, output_hidden_states, kwargs):
        # transformers' own heads take use_cache (code written for them passes use_cache=False); these keep no cache.
        if kwargs.pop("use_cache", None):
            raise ValueError(f"{type(self).__name__} keeps no decoding cache: use_cache must be None or False")
        check_kwargs(kwargs, forward_parameters(self), f"{type(self).__name__}.forward")
        scores = getattr(self.score, "out_features", None)  # (None where an adapter wraps the score)
        if isinstance(scores, int) and self.config.num_labels != scores:
            # (set since the model was built, perhaps through config.id2label: the loss reads config.num_labels, and
            # would fail with torch's shape error, pipelines would name labels the score does not give)
            raise ValueError(
                f"config.num_labels={self.config.num_labels}, but this model's score was built for {scores} labels; "
                f"build or load the model with num_labels={self.config.num_labels} (from_pretrained(..., "
                "num_labels=N, ignore_mismatched_sizes=True) gives a loaded one a new score)"
            )
        dropout = getattr(self.dropout, "p", None)
        if isinstance(dropout, (int, float)) and (self.config.classifier_dropout or 0.0) != dropout:
            # (set since the model was built: the dropout module keeps the probability it was built with)
            raise ValueError(
                f"config.classifier_dropout={self.config.classifier_dropout}, but this model's dropout before the "
                f"score was built with p={dropout}; build or load the model with "
                f"classifier_dropout={self.config.classifier_dropout} (from_pretrained(..., classifier_dropout=p)), "
                "or set model.dropout.p as well"
            )
        if input_ids is not None and input_ids.dim() == 2 and input_ids.shape[1]:
            # Without a mask, padding is read as tokens by the layers (a bidirectional encoder's right-to-left pass
            # starts in it; a causal model runs through left padding): said once, as transformers' heads say it.
            self.warn_if_padding_and_no_attention_mask(input_ids, attention_mask)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          inputs_embeds=inputs_embeds, use_cache=False, output_hidden_states=output_hidden_states,
                          return_dict=True, **{k: v for k, v in kwargs.items() if k != "num_items_in_batch"})


class SeqzooForSequenceClassification(_ClassifierHead):
    """One label (or one value) per sequence, from the positions ``config.classifier_pooling`` names:

    * ``"last"`` (the default reading left to right): the last real token, where a causal model has seen the whole
      sequence;
    * ``"mean"``: the mean over the real tokens;
    * ``"first+last"`` (a bidirectional model's default): the first and the last real token side by side, for a
      bidirectional encoder: its right-to-left direction has seen the whole sequence at the first token, its
      left-to-right one at the last.

    With an attention mask every pooling is exact for left and right padding alike. Given ``num_items_in_batch``
    (what transformers' Trainer counts in the labels of every micro-batch of an accumulated step: the labelled rows,
    or the targets of a multi-label or multi-value row), the loss is the sum over this batch's divided by it, so the
    accumulated step's loss is their mean, as the token head's is."""

    def feature_size(self, config: Any) -> int:
        return config.output_dim * (2 if config.classifier_pooling == "first+last" else 1)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput | tuple:
        r"""
        labels: (batch,) class indices (single-label, -100 where a row has no label), (batch, num_labels) targets in
            [0, 1] (multi-label) or values (regression); ``config.problem_type`` says which, else it is inferred as
            transformers does.
        """
        if find_packing(self, input_ids, inputs_embeds, attention_mask, position_ids, None, False, dict(kwargs)):
            raise ValueError(
                f"{type(self).__name__} pools one label per row, but these rows are packed (position_ids restart, "
                "seq_idx or cu_seq_lens mark several documents in a row); pass one document per row, padded with an "
                "attention_mask"
            )
        # (set since the config was built, perhaps: a misspelt name, or a width the score was not built for)
        require_choice(self.config, "classifier_pooling", POOLINGS)
        built_for = getattr(self.score, "in_features", None)  # (None where an adapter wraps the score)
        if isinstance(built_for, int) and self.feature_size(self.config) != built_for:
            raise ValueError(
                f"config.classifier_pooling={self.config.classifier_pooling!r} pools {self.feature_size(self.config)} "
                f"features, but this model's score was built for {built_for} (the pooling it was built "
                "with); build or load the model with the pooling it should use"
            )
        outputs = self._run_backbone(input_ids, attention_mask, position_ids, inputs_embeds, output_hidden_states,
                                     kwargs)
        real = real_tokens(attention_mask, input_ids, self.config.pad_token_id, outputs.last_hidden_state)
        check_rows_not_empty(real, attention_mask is not None and attention_mask.dim() == 2, self.config.pad_token_id)
        pooled = pool(outputs.last_hidden_state, self.config.classifier_pooling, real)
        logits = self.score(self.dropout(pooled))  # (B, num_labels)
        loss = None
        if labels is not None:
            labels = sequence_labels(labels, logits, self.config)
            # (in float32 at least, as transformers' token-classification loss computes: its sequence loss takes
            # half-precision logits as they are, and binary cross-entropy then computes at their precision)
            wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
            num_items = kwargs.get("num_items_in_batch")
            if num_items is None:
                loss = self.loss_function(labels=labels, config=self.config, pooled_logits=wide)
            else:
                loss = summed_sequence_loss(wide, labels, problem_type(self.config, labels, wide)[0])
                loss = loss / (num_items.to(loss.device) if isinstance(num_items, torch.Tensor) else num_items)
        return_dict = resolved_return_dict(self, return_dict)
        attentions = getattr(outputs, "attentions", None)
        if not return_dict:
            output = tuple(v for v in (logits, outputs.hidden_states, attentions) if v is not None)
            return (loss, *output) if loss is not None else output
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=attentions)


class SeqzooForTokenClassification(_ClassifierHead):
    """One label per position (tagging); a label of -100 is ignored by the loss. Given ``num_items_in_batch`` (the
    labelled positions of every micro-batch of an accumulated step, which transformers' Trainer passes), the loss is
    the sum over this batch's labelled positions divided by it, so the accumulated step's loss is their mean."""

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> TokenClassifierOutput | tuple:
        r"""
        labels: (batch, sequence_length) class indices, -100 where a position has no label (padding, the bytes of
            a word after its first).
        """
        outputs = self._run_backbone(input_ids, attention_mask, position_ids, inputs_embeds, output_hidden_states,
                                     kwargs)
        logits = self.score(self.dropout(outputs.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            labels = index_labels(labels, logits.shape[:2], self.num_labels, "num_labels", "class indices")
            loss = float64_token_loss(self.loss_function, logits, labels, kwargs.get("num_items_in_batch"))
            if loss is None:
                loss = self.loss_function(logits=logits, labels=labels, config=self.config,
                                          num_items_in_batch=kwargs.get("num_items_in_batch"))
        return_dict = resolved_return_dict(self, return_dict)
        attentions = getattr(outputs, "attentions", None)
        if not return_dict:
            output = tuple(v for v in (logits, outputs.hidden_states, attentions) if v is not None)
            return (loss, *output) if loss is not None else output
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                     attentions=attentions)


def sequence_labels(labels: torch.Tensor, logits: torch.Tensor, config: Any) -> torch.Tensor:
    """``labels`` checked against what the loss of ``config.problem_type`` takes (inferred as transformers infers it
    when None: regression for one label, single-label for int64/int32 labels, else multi-label), in the dtype it
    takes: a clear error instead of a broadcast loss, torch's error deep in the loss, or (a multi-label target
    outside [0, 1]) a wrong loss. logits (B, num_labels)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a tensor; got {type(labels).__name__}")
    batch, num_labels = logits.shape
    kind, inferred = problem_type(config, labels, logits)
    if labels.dtype.is_complex:
        raise ValueError(f"labels must be real numbers; got dtype {labels.dtype}")
    if kind == "single_label_classification":
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"single-label classification{inferred} takes class indices (an integer tensor); got "
                             f"labels of dtype {labels.dtype}")
        wanted = [(batch,), (batch, 1)]
    elif kind == "multi_label_classification":
        wanted = [(batch, num_labels)]
    else:
        wanted = [(batch,), (batch, 1)] if num_labels == 1 else [(batch, num_labels)]
    if tuple(labels.shape) not in wanted:
        shapes = " or ".join(str(shape) for shape in wanted)
        raise ValueError(f"{kind.replace('_', ' ')}{inferred} with num_labels={num_labels} takes labels of shape "
                         f"{shapes}; got {tuple(labels.shape)}")
    if kind == "single_label_classification":
        labels = labels.long()
        check_label_range(labels, num_labels, "num_labels", "class indices")
        return labels
    # The losses of the other kinds take float targets, at least float32 (as the logits are taken): in the dtype of
    # half-precision logits (autocast, a bf16 / fp16 model) a target loses digits, or is inf above 65504.
    labels = labels.to(torch.promote_types(logits.dtype, torch.float32))
    if kind == "multi_label_classification" and not torch.compiler.is_compiling():  # (reads values)
        outside = labels[~((labels >= 0) & (labels <= 1))]  # (NaN included)
        if outside.numel():
            # Binary cross-entropy takes any float target: 2.0 or -100 gave a loss, negative at times, without a word.
            raise ValueError(
                f"multi-label classification{inferred} takes targets in [0, 1] (1: the label applies, 0: it does "
                f"not, soft targets between them); labels contain {outside[0].item()}. -100 marks no ignored "
                "target here: binary cross-entropy reads every target (to leave some out, compute the loss from "
                "the logits with a mask of your own)"
            )
    return labels


def problem_type(config: Any, labels: torch.Tensor, logits: torch.Tensor) -> tuple[str, str]:
    """(the problem type, a note for errors that says it was inferred or nothing): ``config.problem_type``, or when
    None what transformers infers from num_labels and the labels' dtype (regression for one label, single-label for
    int64 / int32 labels, else multi-label)."""
    require_choice(config, "problem_type", PROBLEM_TYPES)  # (set since the config was built, perhaps)
    if config.problem_type is not None:
        return config.problem_type, ""
    kind = ("regression" if logits.shape[-1] == 1 else "single_label_classification"
            if labels.dtype in (torch.int64, torch.int32) else "multi_label_classification")
    return kind, " (config.problem_type is None: inferred from num_labels and the labels' dtype)"


def summed_sequence_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """The loss of ``kind`` summed over what transformers' Trainer counts as items (labels that are not -100): the
    labelled rows (single-label), every target (multi-label, regression), for a division by the count over all
    micro-batches of an accumulated step. logits (B, num_labels); labels as :func:`sequence_labels` returns them."""
    labels = labels.to(logits.device)
    if kind == "single_label_classification":
        return F.cross_entropy(logits, labels.view(-1), ignore_index=-100, reduction="sum")
    if kind == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
    if not torch.compiler.is_compiling() and bool((labels == -100).any()):  # (reads values)
        raise ValueError(
            "regression labels contain -100, which transformers' Trainer leaves out of its count of targets "
            "(num_items_in_batch, which the summed loss is divided by), so the loss would be scaled wrong; shift or "
            "scale the targets so that none is exactly -100"
        )
    return F.mse_loss(logits.view(-1), labels.view(-1), reduction="sum")


def real_tokens(
    attention_mask: torch.Tensor | None, input_ids: torch.Tensor | None, pad_token_id: int | None,
    hidden_states: torch.Tensor,
) -> torch.Tensor:
    """(B, T) bool of the real tokens: the attention mask; without one, the tokens that are not the pad token
    (transformers' rule, exact for right padding); else every position."""
    batch, length = hidden_states.shape[:2]
    if attention_mask is not None and attention_mask.dim() == 2:
        return attention_mask[:, -length:].to(torch.bool)
    if input_ids is not None and pad_token_id is not None:
        return input_ids != pad_token_id
    return torch.ones(batch, length, dtype=torch.bool, device=hidden_states.device)


def check_rows_not_empty(real: torch.Tensor, from_mask: bool, pad_token_id: int | None) -> None:
    """Refuse rows without a real token (``real``, (B, T) bool; from the attention mask, else from the pad token):
    a row pooled from padding alone would get logits, and a label in the loss, from no text at all (an empty text in
    a padded batch; alone, it is refused as an empty input)."""
    if torch.compiler.is_compiling():
        return
    has_token = real.any(dim=1)
    if bool(has_token.all()):
        return
    empty = (~has_token).nonzero().flatten().tolist()
    why = "their attention_mask is all 0" if from_mask else f"they hold only the pad token {pad_token_id}"
    raise ValueError(f"row(s) {empty[:8]} of the batch have no real token ({why}): a sequence label needs at least "
                     "one token to be pooled from; leave empty texts out of the batch")


def pool(hidden_states: torch.Tensor, how: str, real: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, H) (or (B, 2H) for "first+last") over the real tokens."""
    positions = torch.arange(hidden_states.shape[1], device=hidden_states.device)
    rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
    last = (positions * real).argmax(-1)
    if how == "last":
        return hidden_states[rows, last]
    if how == "mean":
        weights = real.to(hidden_states.dtype)[..., None]
        return (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1)
    if how != "first+last":
        raise ValueError(f"unknown pooling {how!r}; allowed: {', '.join(map(repr, POOLINGS))}")
    first = torch.where(real, positions, hidden_states.shape[1]).argmin(-1)
    return torch.cat([hidden_states[rows, first], hidden_states[rows, last]], dim=-1)


__all__ = ["SeqzooForSequenceClassification", "SeqzooForTokenClassification", "pool", "problem_type", "real_tokens",
           "sequence_labels", "summed_sequence_loss"]
