"""Configuration shared by the classic recurrent LMs (Elman RNN, LSTM, GRU)."""

from __future__ import annotations

from typing import Any, ClassVar

from seqzoo.models.configuration_utils import (
    SeqzooConfig,
    require_bool,
    require_int,
    require_probability,
)


class ClassicRecurrentConfig(SeqzooConfig):
    r"""
    The classic LM shape (Mikolov 2010; Zaremba et al. 2014): embedding -> dropout -> stacked recurrent layers with
    dropout between them -> dropout -> linear decoder over the vocabulary, optionally tied to the embedding
    (Press & Wolf 2017).

    Args:
        vocab_size: vocabulary size.
        hidden_size: size of each recurrent layer's state.
        embedding_size: size of the token embedding (defaults to ``hidden_size``; must equal it when tied).
        num_hidden_layers: number of stacked recurrent layers.
        dropout: dropout on the embedding, between layers and before the decoder.
        tie_word_embeddings: share the decoder weight with the embedding.
        decoder_bias: give the decoder a bias vector.
        orthogonal_init: initialise hidden-to-hidden weights orthogonally (Saxe et al. 2014), per gate block.
        initializer_range: std of the normal init of the token embedding (and so of a tied decoder). 1.0 is
            torch.nn.Embedding's default and what a hand-written nn.LSTM LM uses: against the recurrent layers'
            U(+-1/sqrt(H)) input weights it gives O(1) pre-activations. The transformer-style 0.02 leaves a
            classic LM at the unigram plateau for hundreds of steps (measured in the lab). An untied decoder gets
            torch.nn.Linear's default bound for its weight, and a zero bias.
    """

    model_type = ""

    vocab_size: int = 258
    hidden_size: int = 256
    embedding_size: int | None = None
    num_hidden_layers: int = 2
    dropout: float = 0.0
    tie_word_embeddings: bool = True
    decoder_bias: bool = True
    orthogonal_init: bool = True
    initializer_range: float = 1.0
    bidirectional_merge: str = "concat"

    def __post_init__(self, **kwargs: Any) -> None:
        if self.embedding_size is None:
            self.embedding_size = self.hidden_size
        super().__post_init__(**kwargs)

    @classmethod
    def derived_fields(cls) -> list[tuple[str, Any]]:
        return [*super().derived_fields(), ("embedding_size", None)]

    def validate_architecture(self) -> None:
        super().validate_architecture()
        require_int(self, "embedding_size", minimum=1)
        require_probability(self, "dropout")
        require_bool(self, "decoder_bias")
        require_bool(self, "orthogonal_init")
        if self.tie_word_embeddings and self.embedding_size != self.hidden_size:
            raise ValueError(
                f"{type(self).__name__}: tie_word_embeddings=True needs embedding_size == hidden_size; got "
                f"embedding_size={self.embedding_size}, hidden_size={self.hidden_size}"
            )

    supports_bidirectional: ClassVar[bool] = True
    bidirectional_merges: ClassVar[tuple[str, ...]] = ("sum", "concat")

    @property
    def embedding_dim(self) -> int:
        return self.embedding_size

    @property
    def output_dim(self) -> int:
        return self.directions * self.hidden_size

    def layer_input_size(self, layer_idx: int) -> int:
        """Layer 0 reads the embedding; later layers read the previous layer's output (both directions when a
        bidirectional layer concatenates them)."""
        return self.embedding_dim if layer_idx == 0 else self.output_dim

    def state_bytes_per_sequence(self, dtype_bytes: int = 4) -> int:
        from seqzoo.layers.recurrent import RECURRENT_MIXERS

        return self.num_hidden_layers * RECURRENT_MIXERS[self.mixer_type].state_bytes(self, dtype_bytes)
