"""PyTorch ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` language models -> seqzoo RNN / LSTM / GRU.

The source is a state dict in the shape of PyTorch's word-language-model example (``examples/word_language_model``:
``encoder.weight`` -> ``rnn.weight_ih_l{k}`` ... -> ``decoder.weight`` / ``decoder.bias``); ``key_map`` renames other
module names onto those (``{"embedding": "encoder", "lstm": "rnn", "fc": "decoder"}``). The cell is read from the
gate rows of ``weight_hh_l0`` (1, 3 or 4 times the hidden size); an ``nn.RNN`` does not record its nonlinearity, so
``nonlinearity="tanh" | "relu"`` must be given for one. Tied embeddings are recognised (the two tensors share
storage or are equal). Files load with ``weights_only=True``: the example's own ``torch.save(model, f)`` pickles the
whole module, and such a file is refused with the one line that saves a state dict instead.

The example's output is ``log_softmax`` of the decoder; seqzoo returns the decoder's logits, so
``logits.log_softmax(-1)`` is the example's output. Its hidden state (``(L, B, H)``, or ``(h, c)`` for an LSTM)
becomes a :class:`~seqzoo.cache.SeqzooCache` with :func:`hidden_to_cache`.

The vocabulary is not in the checkpoint (the example keeps it in ``corpus.dictionary``). Without one the converted
model works on token ids (``model.generate(ids)``). With ``vocabulary`` (a list of words in id order, or a text file
with one word per line: ``"\\n".join(corpus.dictionary.idx2word)``) a word-level tokenizer is saved beside the model:
whitespace-split words, a newline read as ``<eos>`` (as the example's ``data.py`` does), ``<unk>`` for unknown words
when the vocabulary has it, decoded as words joined by spaces; ``<unk>`` and ``<eos>`` are words like the others
(decoded as themselves, as the example's ``generate.py`` writes them), not special tokens that decoding would drop.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from seqzoo.conversions.checkpoints import (
    Reader,
    SourceWeights,
    build_model,
    check_destination,
    conversion_dtype,
    is_torch_save_file,
    load_torch_file,
    require_floating_point,
    staged_destination,
    weights_only_refusal,
)

GATES = {1: "rnn", 3: "gru", 4: "lstm"}
NONLINEARITIES = ("tanh", "relu")
OVERRIDABLE = ("dropout", "pad_token_id", "bos_token_id", "eos_token_id")
# Keys of other model kinds the example trains, and what they are.
OTHER_MODELS = (("transformer_encoder.", "the example's TransformerModel (not a recurrent LM)"),
                ("pos_encoder.", "the example's TransformerModel (not a recurrent LM)"))


def load_word_lm_state_dict(source: Any, key_map: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """The state dict of ``source`` (a ``.pt`` path or a dict), with ``key_map`` applied: each entry renames a whole
    key, or a module prefix (``"lstm"`` renames ``lstm.weight_ih_l0`` to ``rnn.weight_ih_l0``)."""
    state_dict = load_torch_file(source) if isinstance(source, (str, Path)) else dict(
        SourceWeights.from_dict(source, "the word-language-model state dict"))
    if not key_map:
        return state_dict
    renamed, used = {}, set()
    for key, value in state_dict.items():
        new = key_map.get(key)
        if new is not None:
            used.add(key)
        else:
            prefix = next((p for p in key_map if key.startswith(p + ".")), None)
            new = key_map[prefix] + key[len(prefix):] if prefix is not None else key
            used.add(prefix)
        if new in renamed:
            raise ValueError(f"key_map maps two tensors onto {new!r}")
        renamed[new] = value
    unused = [theirs for theirs in key_map if theirs not in used]
    if unused:  # (a misspelt entry would rename nothing, silently)
        modules = sorted({key.split(".")[0] for key in state_dict})
        raise ValueError(f"key_map renames {', '.join(map(repr, unused))}, which names no tensor and no module of the "
                         f"source (its modules: {', '.join(modules)})")
    return renamed


def config_from_state_dict(state_dict: dict[str, torch.Tensor], nonlinearity: str | None = None,
                           **overrides: Any) -> Any:
    """The seqzoo RNN / LSTM / GRU config whose sizes match a word-language-model state dict."""
    from seqzoo.registry import get_architecture

    for marker, what in OTHER_MODELS:
        if any(key.startswith(marker) for key in state_dict):
            raise ValueError(f"the checkpoint is {what}; `convert word-lm` takes nn.RNN / nn.LSTM / nn.GRU models")
    for key in ("encoder.weight", "rnn.weight_hh_l0", "decoder.weight"):
        if key not in state_dict:
            names = ", ".join(sorted({k.split(".")[0] for k in state_dict}))
            raise ValueError(f"not a word-language-model state dict: missing {key!r} (its modules: {names}); pass "
                             f"key_map / --key-map to rename them, e.g. embedding=encoder lstm=rnn fc=decoder")
    for key in state_dict:
        if key.endswith("_reverse") or "weight_hr_l" in key:
            raise ValueError(f"{key!r}: bidirectional and projected (proj_size) recurrent layers have no seqzoo "
                             f"equivalent")
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(f"cannot set {', '.join(unknown)} when converting: the checkpoint's tensors fix them; "
                         f"settable fields are {', '.join(OVERRIDABLE)}")
    for key, dims in (("encoder.weight", "(vocab, embedding size)"),
                      ("rnn.weight_hh_l0", "(gates * hidden size, hidden size)")):
        if state_dict[key].dim() != 2 or 0 in state_dict[key].shape:
            raise ValueError(f"{key} has shape {tuple(state_dict[key].shape)}; expected a non-empty matrix {dims}")
    vocab_size, embedding_size = state_dict["encoder.weight"].shape
    rows, hidden_size = state_dict["rnn.weight_hh_l0"].shape
    if rows % hidden_size or rows // hidden_size not in GATES:
        raise ValueError(f"rnn.weight_hh_l0 has shape {tuple(state_dict['rnn.weight_hh_l0'].shape)}: its rows must "
                         f"be 1, 3 or 4 times its columns (nn.RNN, nn.GRU, nn.LSTM)")
    cell = GATES[rows // hidden_size]
    values: dict[str, Any] = {}
    if cell == "rnn":
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"the checkpoint is an nn.RNN, whose state dict does not record its nonlinearity; pass "
                             f"nonlinearity='tanh' or 'relu' (--nonlinearity), as the model was built with "
                             f"(got {nonlinearity!r})")
        values["nonlinearity"] = nonlinearity
    elif nonlinearity is not None:
        raise ValueError(f"nonlinearity={nonlinearity!r} applies to nn.RNN only; the checkpoint is an "
                         f"nn.{cell.upper()}")
    layers = 1 + max((int(m.group(1)) for key in state_dict if (m := re.fullmatch(r"rnn\.weight_ih_l(\d+)", key))),
                     default=0)  # none at all: one layer, whose missing weight_ih_l0 the weight mapping names
    encoder, decoder = state_dict["encoder.weight"], state_dict["decoder.weight"]
    # The same tensor (its first element and strides), or equal values; a storage shared at another offset is not
    # tying (two weights packed into one buffer: taken as tied, the decoder was dropped for the embedding).
    tied = encoder.shape == decoder.shape and (
        (encoder.data_ptr() == decoder.data_ptr() and encoder.stride() == decoder.stride())
        or torch.equal(encoder, decoder))
    values.update(vocab_size=vocab_size, hidden_size=hidden_size, embedding_size=embedding_size,
                  num_hidden_layers=layers, tie_word_embeddings=tied, decoder_bias="decoder.bias" in state_dict,
                  dropout=0.0, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    values.update(overrides)
    return get_architecture(cell).config_class(**values)


def seqzoo_weights(state_dict: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Word-language-model names -> seqzoo names. Layers without biases (``bias=False``) get zero biases."""
    read = Reader(state_dict)
    V, E, H = config.vocab_size, config.embedding_size, config.hidden_size
    rows = {"rnn": 1, "gru": 3, "lstm": 4}[config.mixer_type] * H
    # A layer built with bias=False saves no bias, nor do the others (zeros compute the same); a bias only some
    # layers lack is a damaged checkpoint, named as missing.
    biased = any(re.fullmatch(r"rnn\.bias_(ih|hh)_l\d+", key) for key in state_dict)
    out = {"model.embed_tokens.weight": read("encoder.weight", (V, E))}
    if config.tie_word_embeddings:
        read.used.add("decoder.weight")
    else:
        out["lm_head.weight"] = read("decoder.weight", (V, H))
    if config.decoder_bias:
        out["lm_head.bias"] = read("decoder.bias", (V,))
    for i in range(config.num_hidden_layers):
        ours = f"model.layers.{i}."
        out[ours + "weight_ih"] = read(f"rnn.weight_ih_l{i}", (rows, E if i == 0 else H))
        out[ours + "weight_hh"] = read(f"rnn.weight_hh_l{i}", (rows, H))
        for name in ("bias_ih", "bias_hh"):
            key = f"rnn.{name}_l{i}"
            out[ours + name] = read(key, (rows,)) if biased else torch.zeros(rows)
    read.finish("the checkpoint does not fit a word-language model of the sizes read from it")
    return out


def convert_word_lm(source: Any, nonlinearity: str | None = None, key_map: dict[str, str] | None = None,
                    dtype: torch.dtype | None = None, **config_overrides: Any) -> Any:
    """A seqzoo RNN / LSTM / GRU causal LM with the weights of ``source`` (a ``.pt`` state-dict file or a dict).
    ``config_overrides`` may set ``dropout`` and the special token ids (all unset by default)."""
    dtype = conversion_dtype(dtype)
    state_dict = load_word_lm_state_dict(source, key_map)
    config = config_from_state_dict(state_dict, nonlinearity, **config_overrides)
    require_floating_point(state_dict, "the checkpoint")
    weights = seqzoo_weights(state_dict, config)
    return build_model(config, weights, dtype or state_dict["encoder.weight"].dtype, "the word-language model")


def hidden_to_cache(hidden: Any, config: Any) -> Any:
    """The example's hidden state -- ``(L, B, H)`` for RNN / GRU, ``(h, c)`` for LSTM -- as a SeqzooCache that
    ``generate`` (``cache=``) continues from, before any token of the inputs it is given."""
    from seqzoo.cache import SeqzooCache

    names = ("h", "c") if config.mixer_type == "lstm" else ("h",)
    parts = tuple(hidden) if isinstance(hidden, (tuple, list)) else (hidden,)
    if len(parts) != len(names) or not all(isinstance(p, torch.Tensor) for p in parts):
        raise ValueError(f"an nn.{config.mixer_type.upper()} hidden state is {' and '.join(names)}: "
                         f"{len(names)} tensor(s) of shape (layers, batch, hidden); got {type(hidden).__name__}")
    for name, part in zip(names, parts):
        if part.dim() != 3 or part.shape[0] != config.num_hidden_layers or part.shape[2] != config.hidden_size:
            raise ValueError(f"hidden state {name!r} has shape {tuple(part.shape)}; expected (layers="
                             f"{config.num_hidden_layers}, batch, hidden={config.hidden_size})")
        if not part.is_floating_point():
            raise ValueError(f"hidden state {name!r} has dtype {part.dtype}; expected a floating-point state")
    if len({part.shape[1] for part in parts}) > 1:  # (generate() failed inside the LSTM kernel)
        raise ValueError(f"the hidden state's h and c hold {parts[0].shape[1]} and {parts[1].shape[1]} sequences; "
                         "an nn.LSTM state holds one h and one c per sequence")
    cache = SeqzooCache.for_model(config)
    for i in range(config.num_hidden_layers):
        cache.update_layer(i, {name: part[i].detach().clone() for name, part in zip(names, parts)})
    return cache


def save_hidden_state(hidden: Any, config: Any, path: str | Path) -> None:
    """Save a hidden state (as :func:`hidden_to_cache` takes it) to a safetensors file."""
    from safetensors.torch import save_file

    cache = hidden_to_cache(hidden, config)
    save_file({f"layers.{i}.{name}": value.contiguous() for i in range(config.num_hidden_layers)
               for name, value in cache.layer(i).items()}, str(path))


def load_hidden_state(path: str | Path, config: Any) -> Any:
    """The SeqzooCache saved by :func:`save_hidden_state`. A file holding more than this model's state (an LSTM's
    cell state ``c`` for a GRU, layers beyond its own) is another model's, and refused: its extra tensors were
    passed over, and the rest taken as this model's state."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise ValueError(f"hidden state file {str(path)!r} does not exist")
    try:
        tensors = load_file(str(path))
    except Exception as err:  # (safetensors' own error names no file: "Error while deserializing header: ...")
        raise ValueError(f"cannot read {str(path)!r} as a hidden state saved by save_hidden_state (a safetensors "
                         f"file; damaged or truncated?): {err}") from err
    names = ("h", "c") if config.mixer_type == "lstm" else ("h",)
    extra = sorted(set(tensors) - {f"layers.{i}.{name}" for i in range(config.num_hidden_layers) for name in names})
    if extra:
        raise ValueError(f"{str(path)!r} is not a hidden state of this model: it holds {', '.join(extra[:4])}"
                         f"{' ...' if len(extra) > 4 else ''}, where an nn.{config.mixer_type.upper()} of "
                         f"{config.num_hidden_layers} layers has {', '.join(names)} for layers 0-"
                         f"{config.num_hidden_layers - 1} only")
    try:
        stacked = [torch.stack([tensors[f"layers.{i}.{name}"] for i in range(config.num_hidden_layers)])
                   for name in names]
    except KeyError as err:
        raise ValueError(f"{str(path)!r} is not a hidden state of this model: missing {err}") from err
    return hidden_to_cache(stacked if len(stacked) > 1 else stacked[0], config)


def word_tokenizer(vocabulary: Any) -> Any:
    """A transformers tokenizer over a word vocabulary (a list of words in id order, or a file with one per line)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = vocabulary
    if isinstance(vocabulary, (str, Path)):
        try:  # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first word
            words = Path(vocabulary).read_text(encoding="utf-8-sig").split("\n")
        except UnicodeDecodeError as err:
            raise ValueError(f"vocabulary file {str(vocabulary)!r} is not UTF-8 text ({err})") from err
        except OSError as err:  # (named by the OS alone: "No such file or directory: 'nope.txt'")
            raise ValueError(f"cannot read the vocabulary file {str(vocabulary)!r} (--vocab): "
                             f"{err.strerror or err}") from err
        if words and words[-1] == "":
            words.pop()  # the file's final newline
    words = list(words)
    duplicates = sorted(w for w, n in Counter(words).items() if n > 1)
    bad = [w for w in words if not isinstance(w, str) or not w or any(c.isspace() for c in w)]
    if duplicates or bad:
        problem = f"duplicates {duplicates[:5]!r}" if duplicates else f"empty, spaced or not text {bad[:5]!r}"
        raise ValueError(f"the vocabulary must hold distinct words without whitespace, one per id; {problem}")
    vocab = {word: i for i, word in enumerate(words)}
    unk = "<unk>" if "<unk>" in vocab else None
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    if "<eos>" in vocab:
        backend.normalizer = normalizers.Replace(Regex(r"\r?\n"), " <eos> ")
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Every word decodes after a space (" the cat"), so the text of a continuation decoded alone continues the text
    # before it: a text-generation pipeline writes prompt + decode(new tokens) ("the cat" + " sat").
    backend.decoder = decoders.Replace(Regex("^"), " ")
    # <unk> and <eos> are words the model predicts like any other (<eos> is the corpus's line end, not the end of a
    # text: the config has no eos_token_id), so they are not special tokens, which skip_special_tokens=True (what
    # `seqzoo generate` and the text-generation pipeline decode with) would drop from the text without a word.
    return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False)


def convert_word_lm_file(source: Any, destination: str | Path, nonlinearity: str | None = None,
                         key_map: dict[str, str] | None = None, vocabulary: Any = None, hidden: Any = None,
                         dtype: torch.dtype | None = None, **config_overrides: Any) -> Any:
    """Convert ``source`` and save it to ``destination``, with a word tokenizer when ``vocabulary`` is given and the
    hidden state (a tensor / tuple, or a ``.pt`` file of one) as ``hidden_state.safetensors`` when ``hidden`` is; all
    of it or nothing (:func:`seqzoo.conversions.checkpoints.staged_destination`)."""
    destination = check_destination(source, destination)
    model = convert_word_lm(source, nonlinearity, key_map, dtype, **config_overrides)
    if vocabulary is not None:
        tokenizer = word_tokenizer(vocabulary)
        if len(tokenizer) != model.config.vocab_size:
            raise ValueError(f"the vocabulary has {len(tokenizer)} words, the checkpoint's embedding "
                             f"{model.config.vocab_size} rows; they must match")
    if isinstance(hidden, (str, Path)):
        hidden = _load_hidden_file(Path(hidden))
    if hidden is not None:
        hidden_to_cache(hidden, model.config)  # a hidden state of the wrong shape or type is refused before writing
    with staged_destination(destination) as staging:
        model.save_pretrained(staging)
        if vocabulary is not None:
            tokenizer.save_pretrained(staging)
        if hidden is not None:
            save_hidden_state(hidden, model.config, staging / "hidden_state.safetensors")
    return model


def _load_hidden_file(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"hidden state file {str(path)!r} does not exist")

    def unreadable(why: str) -> ValueError:
        return ValueError(f"cannot read {str(path)!r} as a hidden state saved with torch.save(hidden, f) (a tensor "
                          f"or a tuple of tensors): {why}")

    not_torch_save = "it is not a torch.save file (text, or another format?) or is damaged"
    if not is_torch_save_file(path):  # (torch's unpickler then failed with "pop from empty list", ...)
        raise unreadable(not_torch_save)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        refusal = weights_only_refusal(err)
        why = {"format": not_torch_save,
               "pickle": "it holds pickled Python objects, which seqzoo does not load (unpickling runs code from the "
                         "file)"}.get(refusal) or (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise unreadable(why) from err


__all__ = ["config_from_state_dict", "convert_word_lm", "convert_word_lm_file", "hidden_to_cache",
           "load_hidden_state", "load_word_lm_state_dict", "save_hidden_state", "seqzoo_weights", "word_tokenizer"]
