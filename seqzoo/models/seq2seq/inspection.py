"""Using and looking into a trained encoder-decoder: text in, text out (transformers 5 has no text-to-text
pipeline), and which source positions each target token attends to.

    from seqzoo import attention_map, seq2seq_generate
    seq2seq_generate(model, tokenizer, ["2024-03-09"])        # -> ["09/03/2024"]
    weights = attention_map(model, tokenizer, "2024-03-09")    # generates the target greedily
    print(weights.text())                                      # one row per target token, one column per source
    weights.plot("attention.png")                              # the heat map (matplotlib)

Not part of the models' Hub bundle: these helpers need seqzoo.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

from seqzoo.utils import new_figure


def seq2seq_generate(model: Any, tokenizer: Any, sources: str | list[str], **generate_kwargs: Any) -> list[str]:
    """Decode the generated target of each source, with the model's generation settings as ``generate()`` reads
    them (its ``generation_config``: greedy unless it or ``generate_kwargs`` say otherwise; at most 64 new tokens
    where neither sets a number)."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    if not sources:
        raise ValueError("seq2seq_generate needs at least one source; got none")
    inputs = tokenizer(sources, return_tensors="pt", padding=True).to(model.device)
    # (a length the generation config sets, saved or given, was overridden by 64)
    settings = generate_kwargs.get("generation_config") or getattr(model, "generation_config", None)
    default_length = GenerationConfig().max_length
    if (getattr(settings, "max_new_tokens", None) is None
            and getattr(settings, "max_length", default_length) == default_length
            and "max_length" not in generate_kwargs):
        generate_kwargs.setdefault("max_new_tokens", 64)
    generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    generate_kwargs.setdefault("tokenizer", tokenizer)  # (what a saved stop_strings needs)
    if generate_kwargs.get("return_dict_in_generate"):  # (it returns text: an explicit True was overridden)
        raise ValueError("seq2seq_generate returns the decoded texts; call model.generate(..., "
                         "return_dict_in_generate=True) for the scores and the other outputs")
    generate_kwargs["return_dict_in_generate"] = False  # (the sequences, whatever the saved settings say)
    with torch.no_grad():
        output = model.generate(**inputs, **generate_kwargs)
    return tokenizer.batch_decode(output, skip_special_tokens=True)


@dataclass
class AttentionMap:
    """The attention weights of one source and target: ``weights[t, j]`` is how much target token ``t`` (the
    token predicted at decoder step t) attends to source token ``j``; each row sums to 1."""

    source_tokens: list[str]
    target_tokens: list[str]
    weights: torch.Tensor  # (T, S)
    description: str = ""
    # The target as text, decoded whole (special tokens left out): target_tokens are decoded one by one, so the bytes
    # of a multi-byte character each show as a replacement character there, and spaces as marks.
    target_text: str = ""

    def favourite(self) -> list[tuple[str, str, float]]:
        """Per target token: the source token it attends to most, and that weight."""
        best = self.weights.max(dim=-1)
        return [(target, self.source_tokens[j], float(w))
                for target, j, w in zip(self.target_tokens, best.indices.tolist(), best.values)]

    def text(self, digits: int = 2) -> str:
        """A table: one row per target token, one column per source token, and each row's favourite."""
        width = max(digits + 2, *(len(token) for token in self.source_tokens))
        label = max(6, *(len(token) for token in self.target_tokens))
        sources = " ".join(token.rjust(width) for token in self.source_tokens)
        lines = [" " * label + " | " + sources + " | attends most to"]
        lines.append("-" * len(lines[0]))
        for row, (target, source, weight) in zip(self.weights.tolist(), self.favourite()):
            cells = " ".join(f"{w:.{digits}f}".rjust(width) for w in row)
            lines.append(f"{target.rjust(label)} | {cells} | {source} ({weight:.{digits}f})")
        return "\n".join(lines)

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """Save the heat map (source across, target down) as a PNG (or another format matplotlib writes, by the
        file's suffix)."""
        check_plot_path(path)
        rows, cols = self.weights.shape
        fig = new_figure(figsize=(1.2 + 0.32 * cols, 1.0 + 0.32 * rows))
        ax = fig.subplots()
        image = ax.imshow(self.weights.float().numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(cols), self.source_tokens, fontsize=8)
        ax.set_yticks(range(rows), self.target_tokens, fontsize=8)
        ax.set_xlabel("source")
        ax.set_ylabel("target")
        ax.set_title(title or self.description, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return Path(path)


def attention_map(
    model: Any, tokenizer: Any, source: str, target: str | None = None, *, layer: int = -1,
    head: int | None = None, max_new_tokens: int = 64,
) -> AttentionMap:
    """The attention weights over ``source`` of each token of ``target`` -- or, without ``target``, of the target
    the model generates greedily (stopping at its end-of-sequence token, which is shown as a row too).

    A recurrent decoder has one attention; the Transformer has one per layer (``layer``, default the last) and
    several heads (``head``, default their mean). A model without attention (``attention="none"``) has no
    weights to show: it raises."""
    config = model.config
    if not getattr(config, "is_encoder_decoder", False) or not getattr(config, "has_attention", True):
        what = "has no attention over its source (attention='none'" if getattr(config, "attention", None) == "none" \
            else "is not an encoder-decoder ("
        raise ValueError(f"{type(model).__name__} {what}); attention maps need a seq2seq model with attention")
    inputs = tokenizer(source, return_tensors="pt").to(model.device)
    if inputs["input_ids"].shape[1] == 0:
        raise ValueError("the source is empty")
    start = torch.tensor([[config.decoder_start_token_id]], device=model.device)
    with torch.no_grad():
        if target is None:
            generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                       num_return_sequences=1, pad_token_id=tokenizer.pad_token_id,
                                       return_dict_in_generate=False)
            decoder_input_ids = generated[:, :-1] if generated.shape[1] > 1 else generated
            predicted = generated[0, 1:].tolist()
        else:
            ids = tokenizer(target, add_special_tokens=False)["input_ids"]
            eos = tokenizer.eos_token_id
            predicted = ids + ([eos] if eos is not None else [])
            if not predicted:
                raise ValueError("the target is empty (and the tokenizer has no end-of-sequence token to predict)")
            decoder_input_ids = torch.cat(
                [start, torch.tensor([predicted[:-1]], dtype=torch.long, device=model.device)], dim=1)
        output = model(**inputs, decoder_input_ids=decoder_input_ids, output_attentions=True)
    layers = output.cross_attentions
    for name, value in (("layer", layer), ("head", head)):  # (True was head 1, and 1.0 an IndexError from torch)
        if not (value is None and name == "head") and type(value) is not int:
            raise ValueError(f"{name}={value!r} is invalid: expected an integer index"
                             f"{', or None for the mean of the heads' if name == 'head' else ''}")
    if not -len(layers) <= layer < len(layers):
        raise ValueError(f"layer={layer} is out of range: this model has {len(layers)} attention layer(s) over its "
                         f"source (0 .. {len(layers) - 1}, or negative from the end)")
    weights = layers[layer][0]  # (heads, T, S)
    if head is not None and not -weights.shape[0] <= head < weights.shape[0]:
        raise ValueError(f"head={head} is out of range: this attention has {weights.shape[0]} head(s) "
                         f"(0 .. {weights.shape[0] - 1}), or head=None for their mean")
    weights = weights.mean(0) if head is None else weights[head]
    source_ids = inputs["input_ids"][0].tolist()
    where = "" if len(layers) == 1 else f", layer {layer % len(layers)}" + ("" if head is None else f", head {head}")
    description = f"{getattr(config, 'attention', 'attention')} attention{where}"
    return AttentionMap([_shown(tokenizer, i) for i in source_ids], [_shown(tokenizer, i) for i in predicted],
                        weights[: len(predicted)].float().cpu(), description,
                        tokenizer.decode(predicted, skip_special_tokens=True))


def _shown(tokenizer: Any, token_id: int) -> str:
    """A token as one readable cell: special tokens by a short name, spaces as a visible mark."""
    if token_id in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        return "<eos>"
    if token_id == tokenizer.pad_token_id:
        return "<pad>"
    text = tokenizer.decode([token_id])
    return {" ": "␣", "\n": "⏎", "\t": "⇥"}.get(text, text if text.isprintable() and text else f"<{token_id}>")


def check_plot_path(path: str | Path) -> None:
    """Refuse, before any work, a plot path that names a folder (an existing one, or one ending in a separator),
    whose folder does not exist or cannot be written, or whose suffix names no format matplotlib writes, or a missing
    matplotlib. (Found by savefig, these came after the decode and its table were printed.)"""
    _require_matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    text = os.fspath(path)
    if not text.strip():  # (Path("") is the current folder)
        raise ValueError(f"cannot write a plot to {text!r}: the path is empty; name the image file, e.g. "
                         "'attention.png'")
    path = Path(path)
    example = f"e.g. {str(path / 'attention.png')!r}"
    if text.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)):  # (Path drops the trailing separator)
        raise ValueError(f"cannot write a plot to {text!r}: it ends with {text[-1]!r}, naming a folder; name the "
                         f"image file, {example}")
    if path.is_dir():
        raise ValueError(f"cannot write a plot to {text!r}: it is a folder; name the image file, {example}")
    formats = FigureCanvasBase.get_supported_filetypes()  # (what savefig writes, read without building a figure)
    suffix = path.suffix.lstrip(".").lower()
    if suffix not in formats:
        raise ValueError(f"cannot write a plot to {str(path)!r}: {'.' + suffix if suffix else 'no suffix'} names "
                         f"no image format; use one of {', '.join('.' + f for f in sorted(formats))}")
    if not path.parent.is_dir():
        what = "is a file, not a folder" if path.parent.exists() else "does not exist"
        raise ValueError(f"cannot write a plot to {str(path)!r}: the folder {str(path.parent)!r} {what}")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise ValueError(f"cannot write a plot to {str(path)!r}: permission denied")
    if not path.exists():
        # os.access answers yes to root anywhere, and of /proc or /sys: a file made and removed beside it says whether
        # one can be written there (they refused the plot after the decode, /proc's as "No such file or directory").
        try:
            handle, probe = tempfile.mkstemp(dir=path.parent, prefix=".seqzoo-plot-", suffix=path.suffix)
        except OSError as err:
            raise ValueError(f"cannot write a plot to {str(path)!r}: the folder {str(path.parent)!r} takes no new "
                             f"file ({err.strerror or err})") from None
        os.close(handle)
        os.unlink(probe)


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ValueError("plotting attention needs matplotlib: pip install matplotlib (or seqzoo's `lab` extra)") \
            from err


__all__ = ["AttentionMap", "attention_map", "seq2seq_generate"]
