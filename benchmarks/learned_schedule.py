"""VDM's learned schedule against fixed ones: the variance of the ELBO's diffusion-loss estimator.

Mixtures (default): on the Gaussian mixtures of benchmarks/loss_variance.py, the fixed imperfect model there (the
exact denoiser of a mis-specified mixture, a function of the noise level) is scored with the ELBO's diffusion
loss (eps parameterization, weighting ``elbo``, uniform low-discrepancy t, batch 64) under the fixed ``cosine`` and
``linear_vp`` schedules and the learned one, before (``learned-init``: nearly linear in gamma between VDM's
endpoints -13.3 and 5) and after optimising only its shape g for the variance (VDM's variance trick, the model
and the endpoints fixed). Printed per row: the mean (learned-init and learned must agree: the bound is invariant
to the shape), its standard error, and the variance of the batch mean.

    .venv/bin/python benchmarks/learned_schedule.py [--batches 2000] [--steps 1000]
Writes benchmarks/results/learned_schedule.json.

MNIST (``--mnist``): trains the mnist preset's network with the ELBO loss (eps, uniform low-discrepancy t) on
``--images`` training images for each of cosine, linear_vp and learned, one thread, then reports per arm the
variance of the loss estimator on held-out test digits and the ELBO in bits/dim (diffusekit.likelihood.elbo).

    .venv/bin/python benchmarks/learned_schedule.py --mnist --images 30000 --runs runs/learned-schedule
Writes benchmarks/results/learned_schedule_mnist.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from diffusekit import parameterizations, schedules, time_sampling, weighting
from diffusekit.loss import DiffusionLoss
from diffusekit.targets import GaussianMixture
from loss_variance import wrong_model

RESULTS = Path(__file__).parent / "results"
ARMS = ("cosine", "linear_vp", "learned")


def elbo_loss(schedule, mode: str = "low_discrepancy") -> DiffusionLoss:
    return DiffusionLoss(schedule, parameterizations.get("eps"), time_sampling.get("uniform", mode),
                         weighting.get("elbo"))


def batch_means(loss: DiffusionLoss, net, target: GaussianMixture, batches: int, batch_size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(batches, dtype=torch.float64)
    with torch.no_grad():
        for b in range(batches):
            out[b] = loss(net, target.sample(batch_size, g), generator=g).loss.mean()
    return out


def optimise_shape(schedule, target: GaussianMixture, steps: int, batch_size: int, lr: float, seed: int) -> list:
    """Adam on g alone (the endpoints fixed), each step's gradient that of the mean of L^2 (the variance trick)."""
    loss = elbo_loss(schedule)
    net = wrong_model(target, schedule, loss.parameterization)
    optimizer = torch.optim.Adam(schedule.module.shape_parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    trace = []
    for _ in range(steps):
        optimizer.zero_grad()
        out = loss(net, target.sample(batch_size, g), generator=g)
        out.loss.mean().backward()
        optimizer.step()
        trace.append(float(out.loss.detach().pow(2).mean()))
    return trace


def mixtures(args) -> None:
    targets = {"mog2d": GaussianMixture.ring2d(), "mog16": GaussianMixture.random(16, 8, seed=4)}
    rows, start = [], time.time()
    for tname, target in targets.items():
        print(f"\n### {tname}: batch {args.batch_size}, {args.batches} batches per row\n")
        print("| schedule | mean loss | std error | var(batch mean) | var / var(learned-init) |")
        print("|---|---|---|---|---|")
        arms = {"cosine": schedules.get("cosine"), "linear_vp": schedules.get("linear_vp"),
                "learned-init": schedules.get("learned", learn_endpoints=False)}
        learned = schedules.get("learned", learn_endpoints=False)
        trace = optimise_shape(learned, target, args.steps, args.batch_size, args.lr, seed=7)
        arms["learned"] = learned
        base = None
        for name, schedule in arms.items():
            loss = elbo_loss(schedule)
            est = batch_means(loss, wrong_model(target, schedule, loss.parameterization), target, args.batches,
                              args.batch_size, seed=1)
            var = float(est.var())
            base = var if name == "learned-init" else base
            row = {"target": tname, "schedule": name, "mean": float(est.mean()), "sem": math.sqrt(var / len(est)),
                   "variance": var}
            rows.append(row)
        for row in rows[-4:]:
            row["ratio_to_learned_init"] = row["variance"] / base
            print(f"| {row['schedule']} | {row['mean']:.4g} | {row['sem']:.2g} | {row['variance']:.3g} | "
                  f"{row['ratio_to_learned_init']:.3f} |")
        rows[-1]["optimisation_mean_L2"] = [trace[0], trace[-1]]
        t = torch.linspace(0, 1, 11, dtype=torch.float64)
        rows[-1]["gamma_at_tenths"] = [round(v, 3) for v in (-learned.logsnr(t)).tolist()]
    elapsed = time.time() - start
    print(f"\n({elapsed:.0f} s; torch {torch.__version__}, 1 thread)")
    write(args.out or RESULTS / "learned_schedule.json",
          {"results": rows, "batches": args.batches, "batch_size": args.batch_size, "steps": args.steps,
           "lr": args.lr, "seconds": elapsed})


# -- MNIST ----------------------------------------------------------------------------------------------------
def mnist_config(arm: str, images: int):
    from diffusekit.config import resolve  # lazy: only the MNIST mode trains

    options = "{learn_endpoints: true}" if arm == "learned" else "{}"
    return resolve("mnist", overrides=[
        f"objective.schedule={arm}", f"objective.schedule_options={options}", "objective.parameterization=eps",
        "objective.weighting=elbo", "objective.time_distribution=uniform", "objective.time_mode=low_discrepancy",
        "objective.time_options={}", "objective.noise_conditioning=logsnr", f"run.total_images={images}",
        "eval.every=null", "eval.loss_every=null", f"run.checkpoint_every={images}"])


def elbo_bits_per_dim(denoiser, x: torch.Tensor) -> float | None:
    """Mean -ELBO of the 8-bit digits ``x`` (in [-1, 1]) in bits/dim through diffusekit.likelihood (the bound's
    module); None where that module is not part of this installation."""
    try:
        from diffusekit.likelihood import elbo  # lazy: the bound is optional for this benchmark
        from diffusekit.likelihood.bits import bits_per_dim, dequantization_nats
    except ImportError:
        return None
    dims = x[0].numel()
    result = elbo(denoiser, denoiser.schedule, x, samples=1, time="quadrature",
                  generator=torch.Generator().manual_seed(0))
    return float(bits_per_dim(result.total.mean() + dequantization_nats(dims), dims))


def mnist(args) -> None:
    from dataclasses import replace  # lazy: only the MNIST mode trains

    from diffusekit.data import load_training_data
    from diffusekit.generate import load_model
    from diffusekit.models import build_loss
    from diffusekit.training.make import train, training_data

    torch.set_num_threads(1)
    runs, rows = Path(args.runs), []
    test = None
    for arm in ARMS:
        config = mnist_config(arm, args.images)
        if test is None:  # the held-out digits, prepared as the training ones
            test = load_training_data(replace(config.data, split="test", limit=None))
        started = time.time()
        train(config, training_data(config), runs / arm)
        seconds = time.time() - started
        model = load_model(runs / arm, ema="model")
        loss = build_loss(model.config, model.denoiser.schedule)
        g = torch.Generator().manual_seed(1)
        means = []
        with torch.no_grad():
            for b in range(args.eval_batches):
                index = torch.arange(b * 64, (b + 1) * 64) % len(test)
                x0, labels = test.tensors(index.numpy())
                cond = {"labels": torch.as_tensor(labels)} if model.num_classes else {}
                means.append(float(loss(model.denoiser.network_output, x0, generator=g, cond=cond).loss.mean()))
            x_elbo = test.tensors(torch.arange(args.elbo_images).numpy())[0]
            bpd = elbo_bits_per_dim(model.denoiser, x_elbo)
        est = torch.tensor(means, dtype=torch.float64)
        row = {"arm": arm, "train_seconds": seconds, "loss_mean": float(est.mean()), "loss_variance": float(est.var()),
               "elbo_bits_per_dim": bpd, "schedule": repr(model.denoiser.schedule)}
        rows.append(row)
        print(json.dumps(row))
    write(args.out or RESULTS / "learned_schedule_mnist.json", {"results": rows, "images": args.images,
                                                                 "eval_batches": args.eval_batches})


def write(path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload.update({"torch": torch.__version__, "python": platform.python_version()})
    path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps on the learned shape")
    parser.add_argument("--lr", type=float, default=3e-2)
    parser.add_argument("--mnist", action="store_true", help="the MNIST training comparison instead")
    parser.add_argument("--images", type=int, default=30000, help="MNIST: training images per arm")
    parser.add_argument("--eval-batches", type=int, default=200, help="MNIST: test batches of 64 for the variance")
    parser.add_argument("--elbo-images", type=int, default=1000, help="MNIST: test digits for bits/dim")
    parser.add_argument("--runs", default="runs/learned-schedule", help="MNIST: where the three runs go")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    mnist(args) if args.mnist else mixtures(args)


if __name__ == "__main__":
    main()
