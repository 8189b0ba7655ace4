"""Text-conditional MNIST: do samples follow captions, including paraphrases never seen in training?

For a text-conditional run (``diffusekit train --preset mnist-text``), draws --per-caption samples for
every caption of every class, separately for the training phrasings and the held-out paraphrases of
``diffusekit.data.captions``, with the run's sampler and guidance (--guidance overrides), and scores them
with the MNIST classifier (``diffusekit.metrics.classifier``): the fraction drawn as the caption's digit,
overall, per split, and for the worst caption. Writes ``benchmarks/results/text_mnist.json``.

Usage::

    .venv/bin/diffusekit train --preset mnist-text --run-dir runs/mnist-text --threads 2
    .venv/bin/python benchmarks/text_mnist.py --run runs/mnist-text
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

from diffusekit.data.captions import captions_for
from diffusekit.generate import generate, load_model
from diffusekit.guidance import GuidanceSettings
from diffusekit.images import make_grid, save_png
from diffusekit.metrics import classify, load_or_train_classifier
from diffusekit.metrics.evaluate import as_json
from diffusekit.text import TextEncoder

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/mnist-text")
    parser.add_argument("--per-caption", type=int, default=20)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "text_mnist.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.run)
    s = model.config.sample
    guidance = GuidanceSettings.from_sample(s, scale=args.guidance)
    classifier, _ = load_or_train_classifier("mnist", log=lambda m: print(m, file=sys.stderr))
    encoder = TextEncoder()
    k = args.per_caption
    splits = {}
    for split in ("train", "heldout"):
        rows, grid = [], []
        for digit, captions in enumerate(captions_for("mnist", split)):
            encoded = encoder.encode(captions)
            for c, caption in enumerate(captions):
                condition = {"text": encoded.states[c:c + 1].expand(k, -1, -1),
                             "text_mask": encoded.mask[c:c + 1].expand(k, -1),
                             "text_pooled": encoded.pooled[c:c + 1].expand(k, -1)}
                images = generate(model.denoiser, k, model.image_shape, sampler=s.sampler, steps=s.steps,
                                  spacing=s.spacing, guidance=guidance, options=s.options, condition=condition)
                predicted = classify(classifier, images.clamp(-1, 1))
                accuracy = float((predicted == digit).float().mean())
                rows.append({"digit": digit, "caption": caption, "accuracy": accuracy})
                if c == 0:
                    grid.append(images[:10])
        save_png(make_grid(torch.cat(grid), 10), RESULTS / "text_mnist" / f"{split}.png")
        splits[split] = {"accuracy": sum(r["accuracy"] for r in rows) / len(rows),
                         "worst_caption": min(rows, key=lambda r: r["accuracy"]), "captions": rows}
        print(f"{split}: accuracy {splits[split]['accuracy']:.1%} over {len(rows)} captions x {k} samples; worst "
              f"{splits[split]['worst_caption']['caption']!r} {splits[split]['worst_caption']['accuracy']:.0%}")
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "run": str(args.run),
           "cur_nimg": model.cur_nimg, "sampler": s.sampler, "steps": s.steps, "guidance": guidance.describe(),
           "per_caption": k, "versions": {"python": platform.python_version(), "torch": torch.__version__},
           "splits": splits}
    Path(args.output).write_text(json.dumps(as_json(out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
