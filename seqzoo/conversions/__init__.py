"""Converters between peer checkpoints and seqzoo models, one module per format, each reachable from the shell as
``seqzoo convert <source> ...`` or ``seqzoo export --to <target> ...`` (see ``cli.py``):

- ``llama`` (Llama / Mistral / Qwen2) and ``gpt2``: transformers' classes <-> the seqzoo Transformer, both ways;
- ``hf_mamba`` (transformers Mamba / Mamba-2, both ways) and ``mamba_ssm`` (raw mamba_ssm folders);
- ``rwkv7`` (RWKV-LM ``.pth``) and ``fla_rwkv7`` (flash-linear-attention), with ``world_tokenizer``;
- ``word_lm`` (PyTorch's word-language-model nn.RNN / LSTM / GRU state dicts);
- ``export`` (seqzoo -> transformers' own classes) and ``checkpoints`` (what they all share: lazy reading, the
  model builder, tokenizer files, errors), with ``downloads`` (a Hub repo id as a source).
"""
