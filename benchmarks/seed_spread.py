"""How much of a seed-to-seed spread of kNN accuracy is the evaluation set's, and how many images would shrink it.

    python benchmarks/seed_spread.py RUN_SEED0 RUN_SEED1 RUN_SEED2            # the test split
    python benchmarks/seed_spread.py RUN_SEED0 RUN_SEED1 RUN_SEED2 --split val --target-sd 0.5

The runs are seeds of one setting (run folders or checkpoints). Each is scored image by image with
the kNN protocol of ``siamgrad eval knn`` (:func:`siamgrad.eval.checkpoint.knn_correct`), on the
same images: ``--split val`` draws one validation split (``--split-seed``) for all of them, where
``siamgrad eval knn --split val`` draws each run's from its own seed. The spread
of their accuracies is then split (:func:`siamgrad.experiments.stats.per_image_split`) into

* the per-image part: images flipping between right and wrong from seed to seed independently
  of each other, which a larger evaluation set averages away (its variance falls as 1 / images);
* the shared part: a seed that makes the model better or worse on many images at once, which no
  evaluation set removes.

Printed: each run's accuracy, the spread and its two parts (points), and ``images_for_target=``,
the evaluation images at which the expected spread falls to ``--target-sd`` (``none`` when the
shared part alone is larger).
"""

from __future__ import annotations

import argparse
import sys

import torch

from siamgrad.errors import SiamgradError
from siamgrad.eval.checkpoint import SPLITS, knn_correct
from siamgrad.experiments.stats import SpreadSplit, per_image_split


def spread_of(runs: list[str], split: str = "test", split_seed: int = 0,
              settings: list[str] | None = None) -> tuple[list[torch.Tensor], SpreadSplit]:
    """Each run's per-image kNN outcomes on the same images (one ``split_seed``), and their split."""
    correct = [knn_correct(run, settings, split=split, split_seed=split_seed) for run in runs]
    return correct, per_image_split([c.tolist() for c in correct])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders or checkpoints: seeds of one setting")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--split-seed", type=int, default=0,
                   help="the validation split's draw, the same for every run (each run's own seed would draw its own images)")
    p.add_argument("--target-sd", type=float, default=0.5, help="the spread to size the evaluation set for (points)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="settings for the evaluation (e.g. --set data.root=...)")
    args = p.parse_args(argv)
    if len(args.runs) < 2:
        print("error: a spread needs at least 2 runs (seeds of one setting); give more run folders", file=sys.stderr)
        return 2
    try:
        correct, split = spread_of(args.runs, args.split, args.split_seed, args.set)
    except SiamgradError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for run, c in zip(args.runs, correct):
        print(f"{run}: kNN {100 * c.float().mean().item():.2f}% on {len(c)} {args.split} images")
    need = split.images_for(args.target_sd)
    print(f"seeds={split.seeds} images={split.images} sd={split.sd:.2f} sd_per_image={split.sd_per_image:.2f} "
          f"sd_shared={split.sd_shared:.2f}")
    print(f"images_for_target={need if need is not None else 'none'} (target sd {args.target_sd:g} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
