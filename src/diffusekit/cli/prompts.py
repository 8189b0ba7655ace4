"""``--prompt`` for text-conditioned runs (``data.captions``): the prompts encoded into the network's condition."""

from __future__ import annotations

from ..errors import TextEncoderNotInstalled, UsageError
from ..generate import class_major_labels

__all__ = ["text_condition"]


def text_condition(args, model, condition):
    """(condition with the --prompt text, prompt index per image) for a caption-conditioned run
    (``data.captions``); (condition, None) otherwise. One prompt is used for every image; several give class-major
    rows, one prompt per row."""
    prompts = args.prompt or []
    if not model.config.data.captions:
        if prompts:
            raise UsageError(f"--prompt: {args.source} is not text-conditioned (its data.captions is off)")
        return condition, None
    if not prompts:
        raise UsageError(f"{args.source} is text-conditioned (data.captions): give what to draw with --prompt TEXT, "
                         "e.g. --prompt 'a handwritten seven' (repeat it for one row per prompt)")
    if any(not p.strip() for p in prompts):
        raise UsageError("--prompt: empty prompt; the text must say what to draw")
    from ..text import TextEncoder  # lazy: the text encoder and its packages load only for text-conditioned runs

    try:
        encoding = TextEncoder().encode(prompts)
    except TextEncoderNotInstalled as e:
        raise UsageError(f"--prompt needs the text encoder: {e}") from None
    which = class_major_labels(args.n, len(prompts))
    text = {"text": encoding.states[which], "text_mask": encoding.mask[which], "text_pooled": encoding.pooled[which]}
    return {**(condition or {}), **text}, which
