import pytest
import torch

from diffusekit import schedules
from diffusekit.generate_video import HistoryGuided, generate_clips

RF = schedules.get("rectified_flow")
SHAPE = (1, 4, 6, 6)  # C, F, H, W


class FrameAware:
    """A stand-in denoiser whose x0_hat depends on the given frames: 0.3 x + the mean of the given frames
    (0 where none is given), so guidance on them has something to act on."""

    schedule = RF

    def __init__(self):
        self.seen = []

    def __call__(self, x, t, cond=None):
        self.seen.append(cond)
        mask = cond["context_mask"].float()[:, None, :, None, None]
        given = (cond["context"] * mask).sum(2, keepdim=True) / mask.sum(2, keepdim=True).clamp(min=1)
        return 0.3 * x + given.expand_as(x)


def _cond(n=2):
    context = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(n, SHAPE[1], dtype=torch.bool)
    mask[:, :2] = True
    return {"context": context, "context_mask": mask}


def test_history_guidance_is_cfg_on_the_given_frames():
    """Song et al. 2025: D(x | none) + w (D(x | frames) - D(x | none)), the 'none' call seeing no frame."""
    denoiser, cond = FrameAware(), _cond()
    x, t = torch.randn(2, *SHAPE), torch.full((2,), 0.5)
    guided = HistoryGuided(denoiser, 2.5)(x, t, cond)
    with_frames = 0.3 * x + cond["context"][:, :, :2].mean(2, keepdim=True)
    torch.testing.assert_close(guided, 0.3 * x + 2.5 * (with_frames - 0.3 * x))
    none = denoiser.seen[-1]
    assert not none["context_mask"].any() and not none["context"].any()
    assert cond["context_mask"][:, :2].all()  # the caller's condition is left as it was
    torch.testing.assert_close(HistoryGuided(denoiser, 1.0)(x, t, cond), with_frames)


def test_prediction_with_history_guidance_follows_the_guided_denoiser():
    cond = _cond(3)
    clips = cond["context"]
    options = dict(frames=6, context=clips, context_frames=2, frame_conditioning=True, steps=6, seed=3)

    class Guided(FrameAware):  # the guided prediction written out, for w = 2
        def __call__(self, x, t, cond=None):
            none = {**cond, "context_mask": torch.zeros_like(cond["context_mask"])}
            return 2 * FrameAware.__call__(self, x, t, cond) - FrameAware.__call__(self, x, t, none)

    ours = generate_clips(FrameAware(), 3, SHAPE, history_guidance=2.0, **options)
    torch.testing.assert_close(ours, generate_clips(Guided(), 3, SHAPE, **options))
    plain = generate_clips(FrameAware(), 3, SHAPE, **options)
    torch.testing.assert_close(ours[:, :, :2], clips[:, :, :2])  # the given frames are kept
    assert (ours[:, :, 2:] - plain[:, :, 2:]).abs().max() > 1e-3


@pytest.mark.parametrize("weight,context,message", [
    (0.5, True, "history_guidance must be >= 1"),
    (2.0, False, "history guidance needs given frames"),
])
def test_history_guidance_errors(weight, context, message):
    options = dict(context=_cond(2)["context"], context_frames=2) if context else {}
    with pytest.raises(ValueError, match=message):
        generate_clips(FrameAware(), 2, SHAPE, frame_conditioning=True, history_guidance=weight, steps=2, **options)
