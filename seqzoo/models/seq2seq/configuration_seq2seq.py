"""Encoder-decoder configuration: the RNN / LSTM / GRU encoder-decoders of Sutskever et al. (2014), Bahdanau et al.
(2015) and Luong et al. (2015), and the Transformer of Vaswani et al. (2017), in one family of configs.

One ``model_type`` (``seqzoo_seq2seq``) covers them all because what separates them -- the cells, how the decoder
starts from the encoder, and how (or whether) it attends to the source -- is a handful of fields. The lab and the
tests set them side by side, a user switches between them with ``--set attention=...``, and one code bundle and
one model card describe every checkpoint.
"""

from __future__ import annotations

from typing import Any, ClassVar

from seqzoo.cache import ATTENTION, RECURRENT
from seqzoo.models.configuration_utils import (
    Capabilities,
    SeqzooConfig,
    loading_config,
    require_bool,
    require_choice,
    require_float,
    require_int,
    require_probability,
    require_token_id,
)

RECURRENT_CELLS = ("rnn", "lstm", "gru")
CELL_TYPES = (*RECURRENT_CELLS, "transformer")
# The decoder state that queries: the previous one (Bahdanau), the current one (Luong), several heads (Vaswani).
RECURRENT_ATTENTIONS = ("none", "bahdanau", "luong-dot", "luong-general", "luong-concat")
ADDITIVE_ATTENTIONS = ("bahdanau", "luong-concat")  # the scores with a hidden layer (attention_size wide)
ATTENTIONS = (*RECURRENT_ATTENTIONS, "scaled-dot")
BRIDGES = ("copy", "projection", "zeros")
STATE_NAMES = {"rnn": ("h",), "lstm": ("h", "c"), "gru": ("h",)}


class Seq2SeqConfig(SeqzooConfig):
    r"""
    An encoder reads the source, a decoder writes the target one token at a time. Source and target share one
    vocabulary and one embedding (seqzoo's byte tokenizer reads both).

    Args:
        encoder_type: ``"lstm"`` | ``"gru"`` | ``"rnn"`` | ``"transformer"``.
        decoder_type: the same choices (default: ``encoder_type``). A Transformer meets only a Transformer.
        num_hidden_layers: encoder layers;  num_decoder_layers: decoder layers (default: the same; a recurrent
            decoder that starts from the encoder's states needs the same number).
        hidden_size: state size of every recurrent layer (of each direction), or the Transformer's width.
        embedding_size: token embedding width of a recurrent model (default ``hidden_size``).
        bidirectional: the recurrent encoder reads the source in both directions; its annotations are
            ``2 * hidden_size`` wide (Bahdanau et al.). ``bidirectional_merge`` is ``"concat"``, the only choice: the
            two directions sit side by side (a config.json saved before it said ``"sum"``, read by nothing, loads as
            ``"concat"``).
        attention: ``"none"`` (Sutskever: the decoder sees the source only through the state it starts from),
            ``"bahdanau"`` (additive, queried by the previous decoder state), ``"luong-dot"``, ``"luong-general"``,
            ``"luong-concat"`` (queried by the current decoder state) for recurrent decoders; ``"scaled-dot"``
            (multi-head) for the Transformer. Default: ``"bahdanau"``, or ``"scaled-dot"`` for the Transformer.
        input_feeding: Luong's input feeding: the previous attentional vector joins the decoder's input (default
            True for Luong attention; only Luong attention has it). Without it a Luong decoder runs the whole
            target through its recurrent kernels at once and attends to every position in parallel; with it, and
            with Bahdanau attention, the decoder steps token by token.
        attention_size: width of the additive scores' hidden layer (default ``hidden_size``; None with the other
            attentions, which have none).
        bridge: how the decoder's initial state comes from the encoder's final states. ``"copy"`` (Sutskever: layer
            i starts where encoder layer i ended; same cell, one direction), ``"projection"`` (Bahdanau: per layer
            ``tanh(W [final states of both directions] + b)``), ``"zeros"`` (no initial information; attention
            only). Default: copy where possible, else projection; none for the Transformer.
        dropout: recurrent models: on the embeddings, between stacked recurrent layers (as
            ``torch.nn.LSTM(dropout=p)``: not after the last layer, whose outputs the attention reads) and on the
            decoder's output (before the vocabulary projection). The Transformer: on the embeddings (with their
            positions) and on each sublayer's output before its residual sum.
        nonlinearity: the Elman RNN's ``"tanh"`` | ``"relu"``;  forget_bias: the LSTM's initial forget-gate bias;
            orthogonal_init: orthogonal hidden-to-hidden blocks.
        num_attention_heads, intermediate_size, max_position_embeddings, attention_dropout, layer_norm_eps: the
            Transformer's (post-norm, sinusoidal positions, ReLU, as in Vaswani et al.; intermediate_size defaults to
            ``4 * hidden_size``, and is None on a recurrent model).
        initializer_range: std of the embedding's normal init (default 1.0 for recurrent models, as torch.nn's and
            the classic LMs'; ``hidden_size ** -0.5`` for the Transformer, whose embeddings are scaled by
            ``sqrt(hidden_size)``).
        decoder_start_token_id: the first decoder input (default ``bos_token_id``).
        is_encoder_decoder: always True (transformers reads it to run ``generate()`` as an encoder-decoder).

    A field the chosen architecture does not read (the Transformer's on a recurrent one, ``nonlinearity`` without an
    Elman RNN, ``forget_bias`` without an LSTM, ``attention_size`` without an additive score) must stay at its
    default: refused when a config is built, a warning when a config.json loads.
    """

    model_type = "seqzoo_seq2seq"
    # Its recurrent encoder reads both ways (Bahdanau et al.); the Transformer refuses the flag on its own.
    supports_bidirectional: ClassVar[bool] = True
    encoder_decoder: ClassVar[bool] = True
    # Its encoder's two directions always sit side by side in the annotations (2 * hidden_size wide).
    bidirectional_merges: ClassVar[tuple[str, ...]] = ("concat",)
    # Trainer's evaluation keeps the logits and drops the cache and the encoder's output.
    keys_to_ignore_at_inference = ["cache", "past_key_values", "cache_params", "encoder_last_hidden_state"]

    vocab_size: int = 258
    hidden_size: int = 256
    num_hidden_layers: int = 2
    num_decoder_layers: int | None = None
    embedding_size: int | None = None
    encoder_type: str = "lstm"
    decoder_type: str | None = None
    bidirectional: bool = False
    bidirectional_merge: str = "concat"
    attention: str | None = None
    input_feeding: bool | None = None
    attention_size: int | None = None
    bridge: str | None = None
    dropout: float = 0.0
    nonlinearity: str = "tanh"
    forget_bias: float = 1.0
    orthogonal_init: bool = True
    num_attention_heads: int = 4
    intermediate_size: int | None = None
    max_position_embeddings: int = 1024
    attention_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    initializer_range: float | None = None
    tie_word_embeddings: bool = True
    decoder_start_token_id: int | None = None
    # transformers reads this generic field to run generate() as an encoder-decoder (a given False is refused).
    is_encoder_decoder: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        if self.bidirectional_merge == "sum" and loading_config():
            # Configs saved before this field was the encoder's said "sum", the generic default, which nothing here
            # read: the encoder has always concatenated. Such a file loads as what it computes.
            self.bidirectional_merge = "concat"
        # Defaults that depend on other fields; an explicit value always wins (and is validated below).
        if self.decoder_type is None:
            self.decoder_type = self.encoder_type
        transformer = self.decoder_type == "transformer"
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_hidden_layers
        if self.embedding_size is None:
            self.embedding_size = self.hidden_size
        if self.attention is None:
            self.attention = "scaled-dot" if transformer else "bahdanau"
        if self.input_feeding is None:
            self.input_feeding = str(self.attention).startswith("luong")
        self._derive_sizes()
        if self.bridge is None and not transformer:
            copyable = self.encoder_type == self.decoder_type and not self.bidirectional
            self.bridge = "copy" if copyable else "projection"
        if self.initializer_range is None and isinstance(self.hidden_size, int) and self.hidden_size > 0:
            self.initializer_range = self.hidden_size**-0.5 if transformer else 1.0
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.bos_token_id
        super().__post_init__(**kwargs)

    @classmethod
    def derived_fields(cls) -> list[tuple[str, Any]]:
        return [*super().derived_fields(), *((name, None) for name in (
            "decoder_type", "num_decoder_layers", "embedding_size", "attention", "input_feeding", "attention_size",
            "intermediate_size", "bridge", "initializer_range", "decoder_start_token_id"))]

    def _derive_sizes(self) -> None:
        """``attention_size`` and ``intermediate_size`` derived from ``hidden_size`` only where the chosen
        architecture reads them; elsewhere None, and a value equal to what they would be derived as (what earlier
        releases wrote into every config.json) is read as None too: a dict of this config with another hidden_size
        builds, and nothing stale is carried on."""
        additive, transformer = self.attention in ADDITIVE_ATTENTIONS, self.decoder_type == "transformer"
        if additive and self.attention_size is None:
            self.attention_size = self.hidden_size
        elif not additive and self.attention_size == self.hidden_size:
            self.attention_size = None
        derived = 4 * self.hidden_size if isinstance(self.hidden_size, int) else None
        if transformer and self.intermediate_size is None:
            self.intermediate_size = derived
        elif not transformer and self.intermediate_size == derived:
            self.intermediate_size = None

    def check_keywords_set_after_loading(self, given: set[str]) -> None:
        # The sizes follow the attention and the decoder: from_pretrained(luong_folder, attention="bahdanau") needs
        # an attention_size (the file has none), and from_pretrained(bahdanau_folder, attention="luong-dot") no
        # longer reads the file's; derived as when a config is built with these keywords, and a kept size the new
        # architecture does not read is refused by name as then.
        chooses = given & {"attention", "encoder_type", "decoder_type"}
        if given & {"attention_size", "intermediate_size"} or chooses:
            # (a keyword equal to the derivation is read as not set, as when a config is built with it)
            self._derive_sizes()
        super().check_keywords_set_after_loading(given | ({"attention_size", "intermediate_size"} if chooses
                                                          else set()))

    def unread_fields(self) -> list[tuple[str, Any, str]]:
        cells = {self.encoder_type, self.decoder_type}
        transformer = self.is_transformer
        # (field, its default, whether this combination reads it, what reads it)
        pooling_defaults = ("last", "first+last") if self.bidirectional else ("last",)
        fields = (
            ("num_attention_heads", 4, transformer, "the Transformer"),
            ("intermediate_size", None, transformer, "the Transformer"),
            ("max_position_embeddings", 1024, transformer, "the Transformer"),
            ("layer_norm_eps", 1e-5, transformer, "the Transformer"),
            ("orthogonal_init", True, not transformer, "the recurrent cells"),
            ("nonlinearity", "tanh", "rnn" in cells, "the Elman RNN's cell"),
            ("forget_bias", 1.0, "lstm" in cells, "the LSTM's cell"),
            ("attention_size", None, self.attention in ADDITIVE_ATTENTIONS,
             "the additive scores of attention 'bahdanau' and 'luong-concat'"),
            # (generic fields of every seqzoo config: an encoder-decoder has no classification head)
            ("classifier_dropout", None, False, "classification heads (an encoder-decoder has none)"),
            # (either default is no setting: "first+last" for a bidirectional encoder, "last" as saved before that)
            ("classifier_pooling", self.classifier_pooling if self.classifier_pooling in pooling_defaults else "last",
             False, "classification heads (an encoder-decoder has none)"),
            # (transformers' label fields, at the two LABEL_i names every config holds unless given others)
            ("num_labels", 2, False, "classification heads (an encoder-decoder has none)"),
            ("id2label", {0: "LABEL_0", 1: "LABEL_1"}, False, "classification heads (an encoder-decoder has none)"),
            ("problem_type", None, False, "classification heads (an encoder-decoder has none)"),
        )
        return [*super().unread_fields(), *((name, default, owner) for name, default, read, owner in fields
                                            if not read)]

    def architecture_summary(self) -> str:
        return (f"encoder_type={self.encoder_type!r}, decoder_type={self.decoder_type!r}, "
                f"attention={self.attention!r}")

    def validate_architecture(self) -> None:
        super().validate_architecture()
        name = type(self).__name__
        require_choice(self, "encoder_type", CELL_TYPES)
        require_choice(self, "decoder_type", CELL_TYPES)
        require_int(self, "num_decoder_layers", minimum=1)
        require_int(self, "embedding_size", minimum=1)
        require_bool(self, "bidirectional")
        require_choice(self, "attention", ATTENTIONS)
        require_bool(self, "input_feeding")
        if self.attention in ADDITIVE_ATTENTIONS or self.attention_size is not None:  # (None where unread)
            require_int(self, "attention_size", minimum=1)
        require_probability(self, "dropout")
        require_choice(self, "nonlinearity", ("tanh", "relu"))
        require_float(self, "forget_bias")
        require_bool(self, "orthogonal_init")
        require_int(self, "num_attention_heads", minimum=1)
        if self.is_transformer or self.intermediate_size is not None:  # (None where nothing reads it)
            require_int(self, "intermediate_size", minimum=1)
        require_int(self, "max_position_embeddings", minimum=1)
        require_probability(self, "attention_dropout")
        require_float(self, "layer_norm_eps", minimum=0.0, exclusive_min=True)
        require_float(self, "initializer_range", minimum=0.0)
        require_token_id(self, "decoder_start_token_id")
        if self.is_encoder_decoder is not True:
            raise ValueError(f"{name}.is_encoder_decoder={self.is_encoder_decoder!r} is invalid: a seq2seq model is "
                             "always an encoder-decoder")
        if (self.encoder_type == "transformer") != (self.decoder_type == "transformer"):
            raise ValueError(
                f"{name}: encoder_type={self.encoder_type!r} with decoder_type={self.decoder_type!r} is not "
                "supported: a Transformer encoder meets a Transformer decoder, a recurrent encoder a recurrent one"
            )
        if self.is_transformer:
            self._validate_transformer(name)
        else:
            self._validate_recurrent(name)
        if self.tie_word_embeddings and self.embedding_size != self.hidden_size:
            raise ValueError(f"{name}: tie_word_embeddings=True needs embedding_size == hidden_size (the decoder's "
                             f"output width); got embedding_size={self.embedding_size}, hidden_size="
                             f"{self.hidden_size}")

    def _validate_transformer(self, name: str) -> None:
        if self.attention != "scaled-dot":
            raise ValueError(f"{name}: attention={self.attention!r} is invalid for a Transformer decoder: it attends "
                             "with 'scaled-dot' (multi-head scaled dot-product attention)")
        for field, value, allowed in (("bidirectional", self.bidirectional, False),
                                      ("input_feeding", self.input_feeding, False), ("bridge", self.bridge, None)):
            if value != allowed:
                raise ValueError(f"{name}.{field}={value!r} is invalid for a Transformer: it is a recurrent "
                                 f"encoder-decoder's setting (leave it {allowed!r})")
        if self.embedding_size != self.hidden_size:
            raise ValueError(f"{name}: a Transformer's embedding_size must equal hidden_size; got "
                             f"{self.embedding_size} and {self.hidden_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"{name}: num_attention_heads={self.num_attention_heads} does not divide hidden_size="
                             f"{self.hidden_size}")

    def _validate_recurrent(self, name: str) -> None:
        require_choice(self, "attention", RECURRENT_ATTENTIONS)
        if self.attention_dropout:  # (the recurrent attentions have no dropout: the value would be ignored)
            raise ValueError(f"{name}.attention_dropout={self.attention_dropout!r} is invalid for a recurrent decoder:"
                             " it is the Transformer's; use dropout")
        require_choice(self, "bridge", BRIDGES)
        if self.input_feeding and not self.attention.startswith("luong"):
            why = ("Bahdanau's decoder reads its context through its input already" if self.attention == "bahdanau"
                   else "a decoder without attention has no attentional vector to feed")
            raise ValueError(f"{name}: input_feeding=True is Luong's and needs a Luong attention; got attention="
                             f"{self.attention!r} ({why})")
        if self.attention == "luong-dot" and self.annotation_size != self.hidden_size:
            raise ValueError(f"{name}: attention='luong-dot' scores s . h_j, which needs annotations as wide as the "
                             f"decoder state ({self.hidden_size}); a bidirectional encoder's are {self.annotation_size}"
                             ": use 'luong-general' (s . W_a h_j) or 'luong-concat'")
        if self.bridge == "copy" and (self.encoder_type != self.decoder_type or self.bidirectional):
            raise ValueError(f"{name}: bridge='copy' starts each decoder layer from the same encoder layer's final "
                             f"state, which needs the same cell and one direction; got encoder_type="
                             f"{self.encoder_type!r}, decoder_type={self.decoder_type!r}, bidirectional="
                             f"{self.bidirectional}: use bridge='projection'")
        if self.bridge != "zeros" and self.num_decoder_layers != self.num_hidden_layers:
            raise ValueError(f"{name}: bridge={self.bridge!r} starts decoder layer i from encoder layer i, so "
                             f"num_decoder_layers ({self.num_decoder_layers}) must equal num_hidden_layers "
                             f"({self.num_hidden_layers}); or use bridge='zeros'")
        if self.bridge == "zeros" and self.attention == "none":
            raise ValueError(f"{name}: bridge='zeros' with attention='none' leaves the decoder no way to see the "
                             "source; use bridge='copy' or 'projection', or an attention")

    # -- what the model is built from -------------------------------------------------------------------------

    @property
    def is_transformer(self) -> bool:
        return self.decoder_type == "transformer"

    @property
    def annotation_size(self) -> int:
        """Width of the encoder's output at each source position (what the decoder attends to)."""
        return self.hidden_size * (2 if self.bidirectional else 1)

    @property
    def steps_in_python(self) -> bool:
        """Whether the decoder steps token by token during training (its input at step t needs step t-1's
        attention), instead of running the whole target through its recurrent kernels at once."""
        return self.attention == "bahdanau" or self.input_feeding

    def cell_config(self, cell: str, input_size: int) -> Any:
        """The config a recurrent mixer of ``cell`` is built from (the mixer protocol builds a mixer from a config
        of its own architecture): ``hidden_size`` state, ``input_size`` inputs (its embedding width: a mixer built
        as layer 0 reads ``embedding_size``)."""
        from seqzoo.models.gru.configuration_gru import GRUConfig
        from seqzoo.models.lstm.configuration_lstm import LSTMConfig
        from seqzoo.models.rnn.configuration_rnn import RNNConfig

        extra = {"rnn": {"nonlinearity": self.nonlinearity}, "lstm": {"forget_bias": self.forget_bias}, "gru": {}}
        config_class = {"rnn": RNNConfig, "lstm": LSTMConfig, "gru": GRUConfig}[cell]
        return config_class(hidden_size=self.hidden_size, embedding_size=input_size, num_hidden_layers=1,
                            tie_word_embeddings=False, orthogonal_init=self.orthogonal_init, **extra[cell])

    # -- what it can do and what it keeps ---------------------------------------------------------------------

    @property
    def embedding_dim(self) -> int:
        return self.embedding_size

    @property
    def output_dim(self) -> int:
        return self.hidden_size

    @property
    def max_input_length(self) -> int | None:
        return self.max_position_embeddings if self.is_transformer else None  # (sinusoidal positions)

    def layer_mixer_types(self) -> list[str]:
        """The decoder's layers (what the decoding cache holds), then its attention over the source."""
        if self.is_transformer:
            return ["attention"] * self.num_decoder_layers + ["cross-attention"] * self.num_decoder_layers
        return [self.decoder_type] * self.num_decoder_layers + (["source-attention"] if self.has_attention else [])

    @property
    def has_attention(self) -> bool:
        return self.attention != "none"

    @property
    def cache_layer_kinds(self) -> list[str]:
        # Transformer: each layer's self-attention K/V, then each layer's cross-attention K/V (computed from the
        # source once). Recurrent: each layer's state, then the attention's keys and input-feeding vector.
        if self.is_transformer:
            return [ATTENTION] * (2 * self.num_decoder_layers)
        return [RECURRENT] * len(self.layer_mixer_types())

    @property
    def capabilities(self) -> Capabilities:
        # Without attention the decoder carries one fixed-size state (the bottleneck); with it, it reads the whole
        # source at every step. No truncated BPTT (targets are short) and no rollback (assisted decoding).
        return Capabilities(constant_state_decode=not self.is_transformer and not self.has_attention,
                            supports_tbptt=False, can_crop_cache=False, can_generate=True)

    def state_bytes_per_sequence(self, dtype_bytes: int = 4) -> int:
        """The recurrent decoder's state (and its input-feeding vector); 0 for the Transformer."""
        if self.is_transformer:
            return 0
        feed = self.hidden_size if self.input_feeding else 0
        return (self.num_decoder_layers * len(STATE_NAMES[self.decoder_type]) * self.hidden_size + feed) * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int = 4) -> int:
        """What decoding keeps per source token (the annotations and the attention's keys), plus, for the
        Transformer, per target token (its self-attention keys and values: the same size)."""
        if self.is_transformer:
            return 2 * self.num_decoder_layers * self.hidden_size * dtype_bytes
        if not self.has_attention:
            return 0
        keys = {"bahdanau": self.attention_size, "luong-concat": self.attention_size, "luong-dot": 0,
                "luong-general": self.hidden_size}[self.attention]
        return (self.annotation_size + keys) * dtype_bytes


__all__ = ["ATTENTIONS", "BRIDGES", "CELL_TYPES", "RECURRENT_ATTENTIONS", "RECURRENT_CELLS", "STATE_NAMES",
           "Seq2SeqConfig"]
