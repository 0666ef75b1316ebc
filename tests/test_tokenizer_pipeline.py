"""The byte tokenizer, AutoTokenizer from a saved folder, pipelines, streaming, and the HF Trainer."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    pipeline,
)
from transformers.generation.streamers import BaseStreamer

import seqzoo
from seqzoo.cli import save_with_tokenizer
from seqzoo.tokenizer import EOS_TOKEN_ID, PAD_TOKEN_ID, VOCAB_SIZE, byte_tokenizer
from tests.conftest import tiny_model


def test_byte_tokenizer_roundtrip():
    tokenizer = byte_tokenizer()
    text = "Héllo, wörld! \n\t∑ 🙂"
    ids = tokenizer(text).input_ids
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert len(tokenizer) == VOCAB_SIZE
    assert tokenizer.pad_token_id == PAD_TOKEN_ID and tokenizer.eos_token_id == EOS_TOKEN_ID
    assert tokenizer.bos_token_id == EOS_TOKEN_ID  # <|endoftext|> begins a text too, as GPT-2's does
    assert tokenizer.padding_side == "left"  # a causal LM generates from the end of every row
    assert tokenizer.decode([72, PAD_TOKEN_ID, 105], skip_special_tokens=True) == "Hi"


def test_saved_folder_loads_with_auto_classes_and_pipeline(tmp_path):
    model = tiny_model("gru-tiny", vocab_size=VOCAB_SIZE, pad_token_id=PAD_TOKEN_ID, bos_token_id=EOS_TOKEN_ID,
                       eos_token_id=EOS_TOKEN_ID)
    save_with_tokenizer(model, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer("abc").input_ids == [97, 98, 99]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path))
    result = generator("Hello", max_new_tokens=8, do_sample=False)
    text = result[0]["generated_text"]
    assert text.startswith("Hello")
    ids = tokenizer("Hello", return_tensors="pt")
    expected = loaded.generate(**ids, max_new_tokens=8, do_sample=False)
    assert text == tokenizer.decode(expected[0], skip_special_tokens=True)


class CollectingStreamer(BaseStreamer):
    def __init__(self):
        self.chunks = []

    def put(self, value):
        self.chunks.append(value.reshape(-1).tolist())

    def end(self):
        self.chunks.append("end")


def test_streaming_yields_every_token_in_order():
    model = tiny_model("lstm-tiny")
    ids = torch.tensor([[5, 6, 7]])
    streamer = CollectingStreamer()
    out = model.generate(ids, max_new_tokens=5, do_sample=False, streamer=streamer, pad_token_id=0)
    assert streamer.chunks[0] == [5, 6, 7] and streamer.chunks[-1] == "end"
    streamed = [token for chunk in streamer.chunks[1:-1] for token in chunk]
    assert streamed == out[0, 3:].tolist()


def test_trainer_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    model = seqzoo.create_model("gru-tiny")
    tokenizer = byte_tokenizer()
    text = "the cat sat on the mat. " * 40
    ids = tokenizer(text).input_ids
    rows = [ids[i:i + 32] for i in range(0, len(ids) - 32, 16)]
    dataset = [{"input_ids": torch.tensor(r), "labels": torch.tensor(r)} for r in rows]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=40, per_device_train_batch_size=8, learning_rate=1e-2,
        logging_steps=10, report_to=[], save_strategy="no", use_cpu=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    batch = {k: torch.stack([d[k] for d in dataset[:8]]) for k in ("input_ids", "labels")}
    with torch.no_grad():
        before = model.eval()(**batch).loss.item()
    trainer.train()
    with torch.no_grad():
        after = model.eval()(**batch).loss.item()
    assert after < 0.6 * before, (before, after)


def test_the_saved_tokenizer_truncates_where_the_positions_end(tmp_path):
    """A Transformer with learned (or sinusoidal) positions takes max_position_embeddings tokens: the tokenizer
    saved beside it says so, so truncation=True cuts a long text there instead of the model failing on it; a model
    whose positions do not end (RoPE, recurrent) keeps the unbounded default."""
    byte_ids = dict(vocab_size=VOCAB_SIZE, pad_token_id=PAD_TOKEN_ID, bos_token_id=EOS_TOKEN_ID,
                    eos_token_id=EOS_TOKEN_ID)
    model = tiny_model("transformer-gpt2-small", max_position_embeddings=24, **byte_ids)
    save_with_tokenizer(model, tmp_path / "gpt2")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "gpt2")
    assert tokenizer.model_max_length == 24
    ids = tokenizer("x" * 100, truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (1, 24)
    AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2")(ids)  # it fits
    for preset in ("transformer-tiny", "gru-tiny"):
        save_with_tokenizer(tiny_model(preset, **byte_ids), tmp_path / preset)
        assert AutoTokenizer.from_pretrained(tmp_path / preset).model_max_length == byte_tokenizer().model_max_length


def _stops_at_a_printable_byte(model, tokenizer, prompts, prompt_length):
    """generate(stop_strings=..., tokenizer=...) stops right after the first generated printable byte: the tokenizer is
    generate()'s, not the model's (transformers hands it on among the step's inputs, where the forward refused it).
    An untrained model's bytes are noise: the first prompt whose greedy continuation has a printable byte is used."""
    kwargs = dict(max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=PAD_TOKEN_ID)
    for prompt in prompts:
        plain = model.generate(prompt, **kwargs)[0, prompt_length:].tolist()
        where = next((i for i, token in enumerate(plain) if 33 <= token <= 126), None)
        if where is not None:
            break
    assert where is not None, "no prompt gave a printable byte to stop at"
    stopped = model.generate(prompt, stop_strings=[chr(plain[where])], tokenizer=tokenizer, **kwargs)
    assert stopped[0, prompt_length:].tolist() == plain[:where + 1]


PROMPTS = [torch.tensor([list(text.encode())]) for text in ("Hello", "abcde", "12345", "The q", "zzzzz")]


def test_stop_strings_with_a_tokenizer_stop_generation(family_preset):
    model = tiny_model(family_preset, vocab_size=VOCAB_SIZE, pad_token_id=PAD_TOKEN_ID, bos_token_id=EOS_TOKEN_ID,
                       eos_token_id=EOS_TOKEN_ID)
    _stops_at_a_printable_byte(model, byte_tokenizer(), PROMPTS, 5)


def test_stop_strings_with_a_tokenizer_stop_a_seq2seq_model():
    model = tiny_model("seq2seq-bahdanau-tiny", vocab_size=VOCAB_SIZE, pad_token_id=PAD_TOKEN_ID,
                       bos_token_id=EOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID)
    _stops_at_a_printable_byte(model, byte_tokenizer(), PROMPTS, 1)
