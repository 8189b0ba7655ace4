"""Post-hoc EMA: an average of any length ``sigma_rel`` reconstructed from a run's snapshots (EDM2, Karras et al.
2024, appendix C.3), written as a checkpoint that ``diffusekit sample`` and ``diffusekit eval`` load.

Every (snapshot, tracked length) pair is a power-function average with a known profile (``gamma_i``, ``t_i``); the
target is the power profile of ``sigma_rel`` at ``t_r`` (the last snapshot, or ``at``). The least-squares weights
``x`` (:func:`~diffusekit.posthoc_ema.solve_mix`) mix the stored averages: ``theta_r = sum_i x_i theta_i``. Only
snapshots taken by ``t_r`` take part. The weights are summed in float64 and stored in the snapshots' dtype;
tensors that are not floating point (counters) come from the newest snapshot.

The output is a checkpoint directory ``<out>/ckpt-<t_r>/`` holding the run's newest checkpoint's raw weights and
EMAs plus one EMA per reconstruction, named ``phema_<sigma_rel>`` (e.g. ``phema_0p100``), and the run's config: pick
one with ``--ema phema_0p100``. It has no optimizer state: it samples, it does not resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from ..generate import load_model
from ..metrics.evaluate import SamplingSettings, feature_metrics, sample_for_evaluation
from ..models import load_checkpoint, save_checkpoint
from ..models.load import resolve_checkpoint
from ..posthoc_ema import check_sigma_rel, gamma_of_sigma_rel, mix_error, sigma_rel_label, solve_mix
from .posthoc_snapshots import Snapshot, list_snapshots, load_snapshot

__all__ = ["Reconstruction", "reconstructed_name", "posthoc_directory", "reconstruct", "write_reconstruction",
           "score_weights"]


def reconstructed_name(sigma_rel: float) -> str:
    """The EMA name of a reconstruction in the checkpoint, e.g. ``phema_0p100``."""
    return f"phema_{sigma_rel_label(sigma_rel)}"


def posthoc_directory(run_dir: str | Path) -> Path:
    return Path(run_dir) / "posthoc"


@dataclass
class Reconstruction:
    cur_nimg: int  # t_r: the image count the averages end at
    sigma_rels: list[float]
    states: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # name -> state dict
    mix: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [snapshots x tracked] weights x
    profile_errors: dict[str, float] = field(default_factory=dict)  # name -> relative L2 error of its profile
    snapshots: list[Snapshot] = field(default_factory=list)  # those used, oldest first


def _usable_snapshots(run_dir: Path, at: int | None) -> tuple[list[Snapshot], int]:
    directory = posthoc_directory(run_dir)
    snapshots = list_snapshots(directory)
    if not snapshots:
        raise UsageError(f"{run_dir} has no post-hoc EMA snapshots (none in {directory}): train it with "
                         "--set ema.posthoc=true")
    first, last = snapshots[0].cur_nimg, snapshots[-1].cur_nimg
    at = last if at is None else int(at)
    if at < first:
        raise UsageError(f"--at {at:,}: before the first post-hoc EMA snapshot ({first:,} images); the snapshots "
                         f"span {first:,}..{last:,}")
    if at > last:
        raise UsageError(f"--at {at:,}: after the last post-hoc EMA snapshot ({last:,} images); the snapshots "
                         f"span {first:,}..{last:,}")
    return [s for s in snapshots if s.cur_nimg <= at], at


def reconstruct(run_dir: str | Path, sigma_rels: list[float], at: int | None = None) -> Reconstruction:
    """The power-function EMAs of lengths ``sigma_rels`` ending at image ``at`` (default: the last snapshot), mixed
    from ``<run_dir>/posthoc/``. Bad lengths, a run without snapshots and ``at`` outside them: one-line UsageError."""
    run_dir = Path(run_dir)
    for sigma_rel in sigma_rels:
        try:
            check_sigma_rel(sigma_rel, "--sigma-rel")
        except ValueError as e:
            raise UsageError(str(e)) from None
    snapshots, at = _usable_snapshots(run_dir, at)
    pairs = [(i, s) for i, snap in enumerate(snapshots) for s in snap.sigma_rels]
    gammas = [g for snap in snapshots for g in snap.gammas]
    times = [snap.cur_nimg for snap in snapshots for _ in snap.sigma_rels]
    result = Reconstruction(at, list(sigma_rels), snapshots=snapshots)
    for sigma_rel in sigma_rels:
        name, gamma = reconstructed_name(sigma_rel), gamma_of_sigma_rel(sigma_rel)
        result.mix[name] = solve_mix(gammas, times, gamma, at)
        result.profile_errors[name] = mix_error(gammas, times, result.mix[name], gamma, at)
    sums: dict[str, dict[str, torch.Tensor]] = {name: {} for name in result.mix}
    for i, snapshot in enumerate(snapshots):  # one snapshot in memory at a time
        states = load_snapshot(snapshot)
        for name, x in result.mix.items():
            for k, (index, tracked) in enumerate(pairs):
                if index != i:
                    continue
                for key, value in states[tracked].items():
                    if not value.is_floating_point():
                        sums[name][key] = value  # counters: the newest wins
                    elif key in sums[name]:
                        sums[name][key] += float(x[k]) * value.double()
                    else:
                        sums[name][key] = float(x[k]) * value.double()
    dtypes = {key: value.dtype for key, value in load_snapshot(snapshots[-1])[snapshots[-1].sigma_rels[0]].items()}
    for name, state in sums.items():
        result.states[name] = {key: value.to(dtypes[key]) for key, value in state.items()}
    return result


def write_reconstruction(run_dir: str | Path, reconstruction: Reconstruction, out: str | Path | None = None,
                         names: list[str] | None = None) -> Path:
    """A checkpoint ``<out>/ckpt-<t_r>/`` (default ``out``: ``<run>/posthoc/reconstructed``) with the run's newest
    checkpoint's weights, config and data description and the reconstructions ``names`` (default all) as EMAs."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else posthoc_directory(run_dir) / "reconstructed"
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out {out}: {path} is a file; --out names the directory the checkpoint is written in")
    base = resolve_checkpoint(run_dir)
    _, model_state, ema_states, state = load_checkpoint(base)
    chosen = {name: reconstruction.states[name] for name in (names or reconstruction.states)}
    return save_checkpoint(out, reconstruction.cur_nimg, model_state, {**ema_states, **chosen},
                           {"config": state["config"], "data_info": state["data_info"],
                            "posthoc": {"source": str(base), "cur_nimg": reconstruction.cur_nimg}})


def score_weights(checkpoint: str | Path, weights: str, reference, extractor, n: int, *, seed: int = 0,
                  device: str = "cpu", batch_size: int = 250, progress=None) -> dict:
    """FID and KID of ``n`` samples of the EMA ``weights`` of ``checkpoint`` against ``reference`` (statistics with
    features), drawn with the run's own sampling settings and the seeds ``(seed, i)`` of ``diffusekit eval``, so
    every weights of a sweep is scored on the same noise."""
    model = load_model(checkpoint, ema=weights, device=device)
    model.require_images("diffusekit ema --sweep")
    settings = SamplingSettings.from_config(model.config.sample, seed=seed, batch_size=batch_size)
    images, _, _ = sample_for_evaluation(model.denoiser, model.image_shape, model.num_classes, n, settings,
                                         device=device, progress=progress, decode=model.decode)
    values, _ = feature_metrics(images, ("fid", "kid"), reference, extractor)
    return {"weights": weights, "cur_nimg": model.cur_nimg, "n": n, "fid": float(values["fid"]),
            "kid": float(values["kid"]), "sampling": settings.describe(), "extractor": values["extractor"],
            "comparable_to_published": values["comparable_to_published"]}
