"""A torch.profiler table of training steps split by what the time serves, for ``cpu_roofline.py``.

Self CPU time of every operator on the stepping thread goes to one category: convolution, normalisation,
attention, matmul (linear layers), elementwise, compiled kernels (inductor's generated code, timed as the self time
of its graph calls), optimizer (AdamW and the gradient norm), EMA, or other ops. An op's category comes from what
it serves: the optimizer's and the EMA's record_function ranges, then the outermost convolution / normalisation /
attention op or autograd node above it (an allocation inside a convolution's backward is the convolution's; copies
and dtype casts, e.g. autocast's, count as elementwise wherever they run), then fused or multi-tensor kernels,
then its own name. "Framework overhead" is the wall time minus all ops' self time: Python,
autograd's engine, dispatch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

CATEGORIES = ("convolution", "normalisation", "attention", "matmul", "elementwise", "compiled kernels",
              "optimizer", "EMA", "other ops")
# record_function ranges that name what their ops serve: torch's optimizer ranges and the EMA range set below
RANGE_CATEGORIES = (("optimizer.step", "optimizer"), ("optimizer.zero_grad", "optimizer"), ("emaset.update", "EMA"))
# substrings of (lower-cased, underscore-free) op and autograd-node names; the first match wins
STRUCTURE_PATTERNS = (("scaleddotproduct", "attention"), ("flashattention", "attention"), ("softmax", "attention"),
                      ("bmm", "attention"), ("convolution", "convolution"), ("conv2d", "convolution"),
                      ("groupnorm", "normalisation"), ("layernorm", "normalisation"), ("batchnorm", "normalisation"))
# multi-tensor and fused kernels (matched anywhere in the chain: on the CPU a foreach op may run per tensor), then
# the op's own name
KERNEL_PATTERNS = (("fusedadam", "optimizer"), ("foreachlerp", "EMA"), ("foreach", "optimizer"),
                   ("compiledfxgraph", "compiled kernels"), ("cppfused", "compiled kernels"))
# copies and dtype casts are elementwise wherever they run (bf16 autocast casts each weight inside the conv op)
COPIES = frozenset(("copy_", "_to_copy", "to", "clone", "contiguous"))
MATMUL_OPS = frozenset(("aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "aten::t", "aten::dot"))
ELEMENTWISE = frozenset((
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "silu", "silu_", "silubackward", "silu_backward",
    "sigmoid", "copy_", "_to_copy", "to", "clone", "contiguous", "fill_", "zero_", "zeros", "zeros_like", "ones_like",
    "empty_like", "cat", "neg", "exp", "sin", "cos", "sqrt", "rsqrt", "pow", "square", "lerp_", "addcmul_",
    "addcdiv_", "addcmul", "addcdiv", "where", "masked_fill", "clamp", "clamp_", "sum", "mean", "mse_loss",
    "mse_loss_backward",
    "expand", "repeat", "gelu", "tanh", "abs", "maximum", "minimum", "upsample_nearest2d",
    "upsample_nearest2d_backward", "avg_pool2d", "avg_pool2d_backward", "embedding", "embedding_dense_backward",
    "index_select", "gather", "scatter_add_", "reciprocal", "log", "erf", "isfinite", "bitwise_and",
    "logical_and", "stack", "narrow", "slice_backward", "threshold_backward", "sigmoid_backward", "mul_out",
))


def _squash(name: str) -> str:
    return name.lower().replace("_", "")


def is_op(name: str) -> bool:
    """Whether a profiler event is an operator (its self time is computation, not framework overhead): an ATen or
    oneDNN op, or a call of an inductor-compiled graph (whose self time is the generated C++ kernels)."""
    return name.startswith(("aten::", "mkldnn::", "inductor::", "quantized::")) or "CompiledFxGraph" in name \
        or "cpp_fused" in name


def categorise(chain: Sequence[str]) -> str:
    """The category of an op from its chain of event names, outermost ancestor first and the op itself last:
    an optimizer or EMA range anywhere above it; else, for a copy or cast, elementwise; else the outermost
    convolution / normalisation / attention op or autograd node (e.g. an allocation inside a convolution's
    backward serves the convolution); else a fused-optimizer, multi-tensor or compiled-graph kernel in the
    chain; else the op's own name (matmul, elementwise); else "other ops"."""
    for name in chain:
        low = name.lower()
        for prefix, category in RANGE_CATEGORIES:
            if low.startswith(prefix):
                return category
    if chain[-1].split("::", 1)[-1] in COPIES:
        return "elementwise"
    for name in chain:
        squashed = _squash(name)
        for pattern, category in STRUCTURE_PATTERNS:
            if pattern in squashed:
                return category
    for name in chain:
        squashed = _squash(name)
        for pattern, category in KERNEL_PATTERNS:
            if pattern in squashed:
                return category
    own = chain[-1]
    if own in MATMUL_OPS:
        return "matmul"
    base = own.split("::", 1)[-1]
    if base in ELEMENTWISE or base.rstrip("_") in ELEMENTWISE:
        return "elementwise"
    return "other ops"


def split_profile(ops: Iterable[tuple[Sequence[str], float]], wall_us: float) -> dict[str, Any]:
    """``ops``: (chain of names ending with the op, self time in microseconds) for every op event. Returns the
    self time per category and the framework overhead (wall minus the ops' self time), in ms and as fractions
    of the wall time, and the ops aggregated by name (calls, self ms, category), largest first."""
    per_category = dict.fromkeys(CATEGORIES, 0.0)
    by_name: dict[str, dict[str, Any]] = {}
    for chain, self_us in ops:
        category = categorise(chain)
        per_category[category] += self_us
        entry = by_name.setdefault(chain[-1], {"name": chain[-1], "calls": 0, "self_us": 0.0, "categories": {}})
        entry["calls"] += 1
        entry["self_us"] += self_us
        entry["categories"][category] = entry["categories"].get(category, 0.0) + self_us
    op_total = sum(per_category.values())
    split = {name: {"ms": us / 1e3, "fraction": us / wall_us} for name, us in per_category.items()}
    split["framework overhead"] = {"ms": (wall_us - op_total) / 1e3, "fraction": (wall_us - op_total) / wall_us}
    top = sorted(by_name.values(), key=lambda e: -e["self_us"])
    for entry in top:
        entry["category"] = max(entry["categories"], key=entry["categories"].get)
        entry["self_ms"] = entry.pop("self_us") / 1e3
        entry["fraction"] = entry["self_ms"] * 1e3 / wall_us
    return {"wall_ms": wall_us / 1e3, "split": split, "ops": top}


def profile_trainer(trainer, steps: int, warmup: int) -> dict[str, Any]:
    """``split_profile`` of ``steps`` steps (after ``warmup`` unprofiled ones), ops of the stepping thread only."""
    from torch.profiler import ProfilerActivity, profile, record_function

    for _ in range(warmup):
        trainer.step()
    emas = trainer.emas
    plain_update = emas.update

    def update(*a, **k):  # a named range, so that the EMA's ops are told from the optimizer's
        with record_function("EMASet.update"):
            plain_update(*a, **k)

    emas.update = update
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            for _ in range(steps):
                with record_function("roofline.step"):
                    trainer.step()
            wall_us = (time.perf_counter() - started) * 1e6
    finally:
        del emas.update
    events = prof.events()
    threads = {e.thread for e in events if e.name == "roofline.step"}
    ops = []
    for event in events:
        if event.thread not in threads or not is_op(event.name):
            continue
        chain, node = [], event
        while node is not None:
            chain.append(node.name)
            node = node.cpu_parent
        ops.append((chain[::-1], event.self_cpu_time_total))
    result = split_profile(ops, wall_us)
    result["steps"] = steps
    result["batch"] = trainer.config.optim.batch_size
    result["ops"] = result["ops"][:40]
    return result


def print_profile(name: str, result: dict[str, Any]) -> None:
    per_step = result["wall_ms"] / result["steps"]
    print(f"\n### Profile: {name} ({result['steps']} steps of batch {result['batch']}, {per_step:.1f} ms/step "
          "under the profiler)\n")
    print("| category | ms/step | share of wall |")
    print("|---|---:|---:|")
    for category, value in sorted(result["split"].items(), key=lambda kv: -kv[1]["ms"]):
        print(f"| {category} | {value['ms'] / result['steps']:.2f} | {value['fraction']:.1%} |")
    print("\nTop 15 ops by self CPU time:\n")
    print("| op | category | calls/step | self ms/step | share of wall |")
    print("|---|---|---:|---:|---:|")
    for op in result["ops"][:15]:
        name = op["name"] if len(op["name"]) <= 48 else op["name"][:45] + "..."
        print(f"| {name} | {op['category']} | {op['calls'] / result['steps']:.0f} | "
              f"{op['self_ms'] / result['steps']:.2f} | {op['fraction']:.1%} |")
