"""Why an exponential Adams-Bashforth multistep can trail k-diffusion's ``sample_lms`` at low NFE on an
identical grid: controlled experiments, one change at a time.

Every variant is a linear multistep method for the probability-flow ODE in VE form (alpha = 1,
sigma = ve_sigma, lambda = -log sigma), built from three choices:

- the interpolated quantity: ``x0`` (the denoiser output D), ``eps`` ((x - D) / sigma, = dx/dsigma), or
  ``x0|eps`` (x0 on steps starting above sigma = 1, eps in sigma from sigma <= 1);
- the interpolation variable: ``lambda``, ``u`` = e^lambda = 1 / sigma, or ``sigma`` = e^-lambda;
- the order k (the start-up ramps 1, 2, .., k as both libraries do), lower_order_final, the corrector
  (UniC: redo the step just taken with the new point as one more node), and the final step to sigma = 0
  (``denoise``: x = D; ``integrate``: the eps interpolant integrated in sigma down to 0).

The step is exact for the interpolant: with y = x / sigma, dy/du = D, so data prediction integrates P(u)
over u = e^lambda; with eps, dx/dsigma = eps. Each integral is taken by 24-point Gauss-Legendre in
lambda (float64). Variants that are a library method are checked against it: each with ``library``
options is run through diffusekit's own ``multistep`` with them as well, and the largest difference is
recorded (``library_max_diff``, float64 rounding); ``eps / sigma / k=4 / integrate`` is also k-diffusion's
``sample_lms`` (its row beside it).
A ``rule`` variable picks the variable per step (see ``RULES``).

Scored on the sampler benchmark's problems and splits (``samplers.py``: same noise, same exact
PF-ODE references), on its two identical grids, at NFE 5, 8, 10, 15, 20, 35, 50, 100.

    python benchmarks/multistep_gap.py                    # -> benchmarks/results/multistep_gap.json
    python benchmarks/multistep_gap.py --problems mog2d --split validation --nfe 5,10
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from diffusekit import schedules
from diffusekit.sampling import sample

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampler_grids import FLOW_UNIFORM, KARRAS_DEFAULT, GridSpec  # noqa: E402
from samplers import RESULTS, Problem, import_k_diffusion, make_problems  # noqa: E402

NODES, WEIGHTS = np.polynomial.legendre.leggauss(24)
EDM80 = schedules.get("edm", sigma_max=80.0)  # alpha = 1, sigma = 80 t: t = ve_sigma / 80
BUDGETS = [5, 8, 10, 15, 20, 35, 50, 100]


@dataclass(frozen=True)
class Variant:
    name: str
    quantity: str = "x0"  # x0 | eps
    variable: str = "lambda"  # lambda | u | sigma | a rule name from RULES
    order: int = 3
    lower_order_final: bool = True
    final: str = "denoise"  # denoise | integrate (eps: in sigma; x0 in sigma: P(0)) | eps (eps in sigma)
    corrector: bool = False
    library: dict | None = None  # the options of diffusekit's ``multistep`` that are this variant, if any


def _variable(name: str, lam: np.ndarray) -> np.ndarray:
    if name == "lambda":
        return lam
    if name == "u":
        return np.exp(lam)
    if name == "sigma":
        return np.exp(-lam)
    raise ValueError(f"unknown variable {name!r}")


RULES = {
    # step length in lambda: a long step (h > 1) is extrapolated in u = 1 / sigma, in which the
    # denoiser of any distribution is linear at high noise (D = mean + Cov x sigma^-2 + O(sigma^-3) with
    # x ~ sigma * noise); short steps in lambda.
    "h>1:u": lambda lam_from, lam_to: "u" if lam_to - lam_from > 1.0 else "lambda",
    # by noise level: at or below unit noise (sigma <= 1, lambda >= 0) in sigma, above in lambda
    "auto": lambda lam_from, lam_to: "sigma" if lam_from >= 0.0 else "lambda",
    # by noise level: above sigma = 1, in u; below, in lambda
    "sigma>1:u": lambda lam_from, lam_to: "u" if lam_from < 0.0 else "lambda",
    # above sigma = 1 in u (D linear in u at high noise), at or below it in sigma (D = x0 + O(sigma^2))
    "u|sigma": lambda lam_from, lam_to: "u" if lam_from < 0.0 else "sigma",
}


def _weights(variable: str, node_lams: list[float], lam_from: float, lam_to: float, kernel_sign: float):
    """w_j = int_{lam_from}^{lam_to} e^{sign * lam} L_j(v(lam)) dlam, L_j the Lagrange basis of the nodes in v."""
    h = lam_to - lam_from
    lam = lam_from + 0.5 * h * (NODES + 1)
    v = _variable(variable, lam)
    nodes = _variable(variable, np.asarray(node_lams, dtype=np.float64))
    kernel = 0.5 * h * WEIGHTS * np.exp(kernel_sign * lam)
    out = np.empty(len(nodes))
    for j in range(len(nodes)):
        others = np.delete(nodes, j)
        out[j] = kernel @ np.prod((v[:, None] - others) / (nodes[j] - others), axis=1)
    return out


def _final_integral(node_sigmas: list[float], sigma_from: float) -> np.ndarray:
    """w_j = int_{sigma_from}^0 L_j(sigma) dsigma (Lagrange basis in sigma)."""
    s = 0.5 * sigma_from * (NODES + 1)
    nodes = np.asarray(node_sigmas)
    out = np.empty(len(nodes))
    for j in range(len(nodes)):
        others = np.delete(nodes, j)
        out[j] = -(0.5 * sigma_from * WEIGHTS) @ np.prod((s[:, None] - others) / (nodes[j] - others), axis=1)
    return out


def variant_solve(denoise, x: torch.Tensor, sigmas: list[float], v: Variant) -> torch.Tensor:
    """Run variant v from x at sigmas[0] down the VE grid ``sigmas`` (last 0); denoise(x, sigma) -> D."""
    history: list[tuple[float, torch.Tensor, torch.Tensor]] = []  # (lambda, D, eps), newest first
    steps = len(sigmas) - 1
    previous = None  # (x_i, index i, nodes used) of the step just taken, for the corrector

    def step(x_from, i, nodes):
        s_from, s_to = sigmas[i], sigmas[i + 1]
        lam_from = -math.log(s_from)
        if s_to == 0.0:
            if v.final == "integrate" and v.quantity == "x0" and v.variable == "sigma":
                # x(0) = P(0): the data-prediction step's limit as sigma_to -> 0 (P the interpolant in sigma)
                s_nodes = np.asarray([math.exp(-p[0]) for p in nodes])
                w = [np.prod(-np.delete(s_nodes, j) / (s_nodes[j] - np.delete(s_nodes, j))) for j in range(len(nodes))]
                return sum(float(wj) * p[1] for wj, p in zip(w, nodes, strict=True))
            if (v.final == "eps" or (v.final == "integrate" and v.quantity != "x0")) and len(nodes) > 1:
                w = _final_integral([math.exp(-p[0]) for p in nodes], s_from)
                return x_from + sum(float(wj) * p[2] for wj, p in zip(w, nodes, strict=True))
            return nodes[0][1]
        lam_to = -math.log(s_to)
        variable = RULES[v.variable](lam_from, lam_to) if v.variable in RULES else v.variable
        lams = [p[0] for p in nodes]
        quantity = v.quantity
        if quantity == "x0|eps":  # data prediction above unit noise, noise prediction in sigma at or below
            quantity, variable = ("x0", variable) if lam_from < 0.0 else ("eps", "sigma")
        if quantity == "x0":  # x_to / s_to = x_from / s_from + int D du
            w = _weights(variable, lams, lam_from, lam_to, 1.0)
            return s_to * (x_from / s_from + sum(float(wj) * p[1] for wj, p in zip(w, nodes, strict=True)))
        w = _weights(variable, lams, lam_from, lam_to, -1.0)  # x_to = x_from - int e^-lam eps dlam
        return x_from - sum(float(wj) * p[2] for wj, p in zip(w, nodes, strict=True))

    for i in range(steps):
        d = denoise(x, sigmas[i])
        node = (-math.log(sigmas[i]), d, (x - d) / sigmas[i])
        if v.corrector and previous is not None and sigmas[i + 1] > 0.0:
            x_prev, j, used = previous
            x = step(x_prev, j, [node] + used)
        history = ([node] + history)[: v.order]
        k = len(history)
        if v.lower_order_final and steps < 15 and i == steps - 2:
            k = min(k, 2)
        previous = (x, i, history[:k])
        x = step(x, i, history[:k])
    return x


VARIANTS = [
    Variant("ours: x0/lambda k3 lof", library={"order": 3, "variable": "lambda"}),
    Variant("x0/lambda k3 no-lof", lower_order_final=False,
            library={"order": 3, "variable": "lambda", "lower_order_final": False}),
    Variant("x0/lambda k4 no-lof", order=4, lower_order_final=False),
    Variant("x0/u k3 lof", variable="u"),
    Variant("x0/sigma k3 lof", variable="sigma"),
    Variant("eps/lambda k3 lof", quantity="eps"),
    Variant("eps/sigma k3 lof", quantity="eps", variable="sigma"),
    Variant("eps/sigma k4 no-lof (=lms)", quantity="eps", variable="sigma", order=4, lower_order_final=False,
            final="integrate", library={"order": 4, "prediction": "noise", "lower_order_final": False}),
    Variant("eps/sigma k4 no-lof denoise", quantity="eps", variable="sigma", order=4, lower_order_final=False),
    Variant("eps/sigma k3 no-lof integrate", quantity="eps", variable="sigma", lower_order_final=False,
            final="integrate"),
    Variant("x0/sigma k3 lof integrate", variable="sigma", final="integrate"),
    Variant("x0/sigma k3 no-lof integrate", variable="sigma", lower_order_final=False, final="integrate"),
    Variant("x0/sigma k4 lof integrate", variable="sigma", order=4, final="integrate"),
    Variant("x0/sigma k4 no-lof integrate", variable="sigma", order=4, lower_order_final=False, final="integrate"),
    Variant("x0/sigma k3 lof integrate +corr", variable="sigma", final="integrate", corrector=True),
    Variant("x0/sigma k3 no-lof integrate +corr", variable="sigma", lower_order_final=False, final="integrate",
            corrector=True),
    Variant("x0/sigma k2 no-lof integrate +corr", variable="sigma", order=2, lower_order_final=False,
            final="integrate", corrector=True),
    Variant("x0/sigma k3 lof +corr", variable="sigma", corrector=True),
    Variant("x0/sigma k3 lof final-eps", variable="sigma", final="eps", library={"order": 3}),
    Variant("x0/sigma k4 lof final-eps", variable="sigma", order=4, final="eps"),
    Variant("x0/sigma k3 lof final-eps +corr", variable="sigma", final="eps", corrector=True,
            library={"order": 3, "corrector": True}),
    Variant("x0/sigma k3 no-lof final-eps +corr", variable="sigma", lower_order_final=False, final="eps",
            corrector=True),
    Variant("x0/sigma k4 lof final-eps +corr", variable="sigma", order=4, final="eps", corrector=True),
    Variant("x0/lambda k3 lof final-eps", final="eps"),
    Variant("x0/auto k3 lof final-eps", variable="auto", final="eps"),
    Variant("x0/auto k3 lof final-eps +corr", variable="auto", final="eps", corrector=True),
    Variant("x0/auto k4 lof final-eps", variable="auto", order=4, final="eps"),
    Variant("x0/auto k4 lof final-eps +corr", variable="auto", order=4, final="eps", corrector=True),
    Variant("eps/lambda k3 lof +corr", quantity="eps", corrector=True),
    Variant("x0/h>1:u k3 lof", variable="h>1:u"),
    Variant("x0/sigma>1:u k3 lof", variable="sigma>1:u"),
    Variant("x0/h>1:u k3 no-lof", variable="h>1:u", lower_order_final=False),
    Variant("ours+corr: x0/lambda k3 lof", corrector=True),
    Variant("x0/u k3 lof +corr", variable="u", corrector=True),
    Variant("x0/h>1:u k3 lof +corr", variable="h>1:u", corrector=True),
    Variant("eps/sigma k3 lof +corr", quantity="eps", variable="sigma", corrector=True),
    Variant("eps/sigma k4 no-lof integrate +corr", quantity="eps", variable="sigma", order=4,
            lower_order_final=False, final="integrate", corrector=True),
    Variant("x0|eps/u|sigma k3 lof +corr", quantity="x0|eps", variable="u|sigma", final="integrate", corrector=True),
    Variant("x0|eps/u|sigma k4 lof +corr", quantity="x0|eps", variable="u|sigma", order=4, final="integrate",
            corrector=True),
    Variant("x0|eps/sigma k4 lof +corr", quantity="x0|eps", variable="sigma", order=4, final="integrate",
            corrector=True, library={"order": 4, "corrector": True, "prediction": "switch"}),
    Variant("x0|eps/sigma k3 lof +corr", quantity="x0|eps", variable="sigma", final="integrate", corrector=True,
            library={"order": 3, "corrector": True, "prediction": "switch"}),
    Variant("x0/u|sigma k3 lof final-eps", variable="u|sigma", final="eps"),
    Variant("x0/u|sigma k3 lof final-eps +corr", variable="u|sigma", final="eps", corrector=True),
    Variant("x0/u|sigma k4 lof final-eps +corr", variable="u|sigma", order=4, final="eps", corrector=True),
]


def score(x: torch.Tensor, ref: torch.Tensor) -> dict:
    err = x.to(torch.float64) - ref
    return {"rmse": float(err.pow(2).mean().sqrt()), "median": float(err.pow(2).mean(1).sqrt().median())}


def run(problem: Problem, split_name: str, grids: list[GridSpec], budgets: list[int], variants, kd) -> dict:
    split = problem.splits[split_name]
    gmm = split.gmm
    ref, _ = split.reference(80.0, 1.0)
    denoise = lambda x, s: gmm.x0_hat(x, 1.0, s)  # noqa: E731
    split_denoiser = gmm.denoiser(EDM80)
    out: dict = {}
    for grid in grids:
        table = out.setdefault(grid.name, {})
        for b in budgets:
            sigmas = grid.ve(b).tolist()
            start = 80.0 * split.noise.to(torch.float64)
            for v in variants:
                x = variant_solve(denoise, start, sigmas, v)
                table.setdefault(v.name, {})[b] = score(x, ref)
                if v.library is not None:  # the variant written out here against the library's own sampler
                    ts = torch.tensor(sigmas, dtype=torch.float64) / 80.0
                    ours = sample(split_denoiser, split.noise.to(torch.float64), ts,
                                  EDM80, "multistep", **v.library)
                    table[v.name][b]["library_max_diff"] = float((ours - x).abs().max())
            if kd is not None:
                model = lambda x, s: gmm.x0_hat(x, torch.ones_like(s), s)  # noqa: E731
                x = kd.sample_lms(model, start, torch.tensor(sigmas, dtype=torch.float64), disable=True)
                table.setdefault("kd sample_lms (k4)", {})[b] = score(x, ref)
    return out


def print_tables(name: str, results: dict, budgets: list[int], key: str):
    for grid, rows in results.items():
        print(f"\n#### {name}: {grid}, {key}\n")
        print("| variant | " + " | ".join(f"NFE {b}" for b in budgets) + " |")
        print("|---|" + "---:|" * len(budgets))
        for variant, by_nfe in rows.items():
            print(f"| {variant} | " + " | ".join(f"{by_nfe[b][key]:.2e}" for b in budgets) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default="mog2d,mog64")
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument("--nfe", default=",".join(map(str, BUDGETS)))
    parser.add_argument("--variants", default=None, help="comma-separated variant names (default: all)")
    parser.add_argument("--output", type=Path, default=RESULTS / "multistep_gap.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    budgets = [int(b) for b in args.nfe.split(",")]
    variants = VARIANTS if args.variants is None else [v for v in VARIANTS if v.name in args.variants.split(",")]
    try:
        kd = import_k_diffusion()
    except ImportError:
        kd = None
    problems = make_problems(argparse.Namespace(quick=False, samples=None, problems=args.problems.split(",")))
    report = {"split": args.split, "budgets": budgets, "variants": [asdict(v) for v in variants], "problems": {}}
    began = time.perf_counter()
    for problem in problems:
        results = run(problem, args.split, [KARRAS_DEFAULT, FLOW_UNIFORM], budgets, variants, kd)
        report["problems"][problem.name] = results
        for key in ("rmse", "median"):
            print_tables(f"{problem.name} ({args.split})", results, budgets, key)
        sys.stdout.flush()
    report["runtime_s"] = time.perf_counter() - began
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nWrote {args.output} ({report['runtime_s']:.0f}s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
