"""Landmark models on their own family of warps and on subjects of another, side by side.

Issue 10 asks every landmark figure to be reported on both:
- *own family*: the training generator (``labelfree.landmarks.synthetic``) with an unseen seed:
  30 Shepp-Logan phantoms at 128 px (seed 2), or 20 warps of the MNI152 head crop at 64^3
  with a 4 mm control-point std (seed 2), as the bundled models were trained;
- *evaluation family*: ``labelfree.landmarks.evaluation`` (pose, dense shape and scanner
  changes that no trainer draws): 16 phantoms, or 8 head crops at 1 mm (seed 200).
Reported: mean correspondence error over all pairs (px or mm), and that of the top half of
the landmarks by the model's stored importance.

Usage: python bench/landmark_generalisation.py [--model FILE ...]   (default: the bundled
models; about 1 minute each on 2 cores)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _common import OUT, fmt_table, load_mni, machine
from landmarks import brain_crop, predict_all

from labelfree.landmarks.evaluation import evaluation_subjects, phantom_subjects
from labelfree.landmarks.metrics import correspondence_error
from labelfree.landmarks.model import load_landmark_model
from labelfree.landmarks.synthetic import shepp_logan_population, volume_population


def populations(ndim: int) -> dict[str, object]:
    """The own-family and evaluation-family test populations of a dimension."""
    if ndim == 2:
        return {
            "own family": shepp_logan_population(30, size=128, seed=2),
            "evaluation family": phantom_subjects(16, size=128, seed=200),
        }
    t1, _, _ = load_mni()
    brain = brain_crop(np.asarray(t1.array, dtype=np.float32))
    spacing = tuple(float(s) for s in t1.spacing)
    return {
        "own family": volume_population(brain, 20, size=64, spacing=spacing, seed=2),
        "evaluation family": evaluation_subjects(brain, 8, seed=200, spacing=spacing),
    }


def score(model, population) -> tuple[float, float]:
    """Mean correspondence error of all landmarks and of the top half by importance."""
    errors = correspondence_error(population, predict_all(model, population.images))
    importance = model[1].get("importance")
    if importance is None:
        return float(errors.mean()), float("nan")
    top = np.argsort(-np.asarray(importance), kind="stable")[: len(errors) // 2]
    return float(errors.mean()), float(errors[top].mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, action="append", help="model file (repeatable)")
    args = parser.parse_args()
    models = [(str(p), load_landmark_model(p)) for p in args.model or []] or [
        (f"bundled {d}-D", load_landmark_model(None, ndim=d)) for d in (2, 3)
    ]
    print(machine())
    rows, record, cache = [], {"machine": machine()}, {}
    for name, model in models:
        ndim = int(model[1]["ndim"])
        unit = "px" if ndim == 2 else "mm"
        cache.setdefault(ndim, populations(ndim))
        record[name] = {}
        for family, population in cache[ndim].items():
            every, top = score(model, population)
            rows.append([name, family, f"{every:.2f} {unit}", f"{top:.2f} {unit}"])
            record[name][family] = {"all": every, "top_half": top}
    print(fmt_table(rows, ["model", "test subjects", "all landmarks", "top half by importance"]))
    OUT.mkdir(exist_ok=True)
    (OUT / "landmark_generalisation.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
