"""Landmark models on their own family of warps and on subjects of another, side by side.

Issue 10 asks every landmark figure to be reported on both:
- *own family*: the training generator (``labelfree.landmarks.synthetic``) with an unseen seed:
  30 Shepp-Logan phantoms at 128 px (seed 2), or 20 warps of the MNI152 head crop at 64^3
  with a 4 mm control-point std (seed 2), as the bundled models were trained;
- *evaluation family*: ``labelfree.landmarks.evaluation`` (pose, dense shape and scanner
  changes that no trainer draws): 16 phantoms, or 8 head crops at 1 mm (seed 200).
Reported: mean correspondence error over all pairs (px or mm), and that of the top half of
the landmarks by the model's stored importance; for models that store a pose reference, also
with test-time pose refinement (``labelfree.landmarks.refine``, what ``detect`` does) and the
share of subjects it refined.

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
from labelfree.landmarks.refine import refine_landmarks, stored_pose_reference
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


def refined_all(model, images: np.ndarray, plain: np.ndarray) -> tuple[np.ndarray, float]:
    """(N, K, D) landmarks after pose refinement, and the share of images refined."""
    regressor, config = model[0], model[1]
    reference = stored_pose_reference(config)
    out = [
        refine_landmarks(regressor, config, im, *reference, first=p)
        for im, p in zip(images, plain, strict=True)
    ]
    return np.stack([points for points, _ in out]), float(np.mean([done for _, done in out]))


def score(model, population, landmarks) -> tuple[float, float]:
    """Mean correspondence error of all landmarks and of the top half by importance."""
    errors = correspondence_error(population, landmarks)
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
            plain = predict_all(model, population.images)
            every, top = score(model, population, plain)
            rows.append([name, family, "plain", f"{every:.2f} {unit}", f"{top:.2f} {unit}", ""])
            record[name][family] = {"all": every, "top_half": top}
            if stored_pose_reference(model[1]) is None:
                continue
            refined, share = refined_all(model, population.images, plain)
            every, top = score(model, population, refined)
            rows.append(
                [
                    name,
                    family,
                    "pose refined",
                    f"{every:.2f} {unit}",
                    f"{top:.2f} {unit}",
                    f"{share:.0%}",
                ]
            )
            record[name][family] |= {
                "refined_all": every,
                "refined_top_half": top,
                "refined_share": share,
            }
    header = ["model", "test subjects", "detection", "all landmarks", "top half", "refined"]
    print(fmt_table(rows, header))
    OUT.mkdir(exist_ok=True)
    (OUT / "landmark_generalisation.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
