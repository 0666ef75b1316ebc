"""Foundation benchmark: seqzoo LSTM/GRU LMs vs the same LM on raw torch nn.LSTM/nn.GRU, and the seqzoo
Transformer (Llama variant) vs transformers' LlamaForCausalLM with the same config and weights.

    OMP_NUM_THREADS=2 python benchmarks/bench_foundation.py

Prints markdown tables of median times and ratios (peer time / seqzoo time: > 1 means seqzoo is faster).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import seqzoo
from timing import compare, machine, table


class TorchRecurrentLM(nn.Module):
    """The PyTorch word-language-model shape on nn.LSTM / nn.GRU: what a user would write by hand."""

    def __init__(self, cell: str, vocab: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](hidden, hidden, layers, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)
        self.decoder.weight = self.embed.weight

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.rnn(self.embed(ids))[0])
        return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))


def recurrent_rows(batch: int, length: int, hidden: int, repeats: int) -> list[list[object]]:
    rows = []
    for cell in ("lstm", "gru"):
        ours = seqzoo.create_model(f"{cell}-small", hidden_size=hidden, dropout=0.0).train()
        peer = TorchRecurrentLM(cell, ours.config.vocab_size, hidden, ours.config.num_hidden_layers).train()
        ids = torch.randint(0, 256, (batch, length))

        def step(model, call):
            def run():
                model.zero_grad(set_to_none=True)
                call().backward()
            return run

        times = compare({
            "seqzoo": step(ours, lambda: ours(ids, labels=ids, use_cache=False).loss),
            "torch": step(peer, lambda: peer(ids, ids)),
        }, repeats=repeats)
        rows.append([f"{cell.upper()} LM fwd+bwd, B={batch} T={length} H={hidden} L=2",
                     f"{times['seqzoo'] * 1e3:.1f}", f"{times['torch'] * 1e3:.1f}",
                     f"{times['torch'] / times['seqzoo']:.2f}x"])
    return rows


def transformer_rows(repeats: int) -> list[list[object]]:
    torch.manual_seed(0)
    ours = seqzoo.create_model("transformer-small", tie_word_embeddings=False).eval()
    c = ours.config
    peer_config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.layer_norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=False,
        pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
    )
    peer = LlamaForCausalLM(peer_config).eval()
    peer.load_state_dict(_to_llama_keys(ours.state_dict()))
    for impl in ("sdpa",):
        ours.set_attn_implementation(impl)
        peer.set_attn_implementation(impl)
    rows = []
    with torch.no_grad():
        ids = torch.randint(0, 256, (1, 16))
        torch.testing.assert_close(ours(ids).logits, peer(ids).logits, atol=1e-4, rtol=1e-4)
        for length in (256, 1024):
            ids = torch.randint(0, 256, (1, length))
            times = compare({"seqzoo": lambda: ours(ids, use_cache=False), "llama": lambda: peer(ids, use_cache=False)},
                            repeats=repeats)
            rows.append([f"Transformer (Llama) forward, T={length}", f"{times['seqzoo'] * 1e3:.1f}",
                         f"{times['llama'] * 1e3:.1f}", f"{times['llama'] / times['seqzoo']:.2f}x"])
        prompt = torch.randint(0, 256, (1, 32))
        kwargs = dict(max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=256)
        assert torch.equal(ours.generate(prompt, **kwargs), peer.generate(prompt, **kwargs))
        times = compare({"seqzoo": lambda: ours.generate(prompt, **kwargs),
                         "llama": lambda: peer.generate(prompt, **kwargs)}, repeats=repeats)
        rows.append(["Transformer (Llama) 64-token greedy decode", f"{times['seqzoo'] * 1e3:.1f}",
                     f"{times['llama'] * 1e3:.1f}", f"{times['llama'] / times['seqzoo']:.2f}x"])
    return rows


def _to_llama_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renames = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            key = key.replace(f".{old}.", f".{new}.")
        out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = recurrent_rows(batch=16, length=128, hidden=512, repeats=args.repeats)
    rows += transformer_rows(args.repeats)
    print(f"machine: {machine()}\n")
    print(table(["workload", "seqzoo ms", "peer ms", "peer / seqzoo"], rows))


if __name__ == "__main__":
    main()
