"""Text conditioning: an offline sentence encoder (all-MiniLM-L6-v2 in plain torch, see :mod:`.minilm`)."""

from .minilm import (
    INSTALL_HINT,
    BertEncoder,
    TextEncoder,
    TextEncoderNotInstalled,
    TextEncoding,
    TextTokenizer,
    text_encoder_dir,
)

__all__ = ["INSTALL_HINT", "BertEncoder", "TextEncoder", "TextEncoderNotInstalled", "TextEncoding",
           "TextTokenizer", "text_encoder_dir"]
