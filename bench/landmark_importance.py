"""Does landmark importance mean precision? Top-N landmarks by each ranking, scored on unseen warps.

For each bundled landmark model (2-D phantoms, 3-D MNI152 warps), importance is measured on
a training-family population (``labelfree.landmarks.synthetic``, seed 100) and the landmarks
are scored on subjects of the evaluation family (``labelfree.landmarks.evaluation``: pose,
dense shape and scanner changes that no trainer draws; 16 phantoms, 8 brains at 1 mm):
- *increase* (the default until 2026-12-07): how much the registration loss rises when the
  landmark is left out (``landmark_importance(..., method="increase")``);
- *precision* (the default now): the RMS disagreement of each landmark under random smooth
  warps of the measuring images (no labels needed).
Each row gives the mean correspondence error (against the known warps) of all landmarks and
of the top quarter, half and three quarters by each ranking. Issue 10 asks that keeping the top
N is never worse than keeping all.

Usage: python bench/landmark_importance.py   (about 2 minutes on 2 CPU cores)
"""

from __future__ import annotations

import json

import numpy as np
from _common import OUT, fmt_table, load_mni, machine
from landmarks import brain_crop, predict_all

from labelfree.landmarks.evaluation import evaluation_subjects, phantom_subjects
from labelfree.landmarks.metrics import correspondence_error
from labelfree.landmarks.model import load_landmark_model
from labelfree.landmarks.redundancy import landmark_importance
from labelfree.landmarks.synthetic import shepp_logan_population, volume_population

SHARES = (0.25, 0.5, 0.75)


def _rows(name, unit, model, measure_images, evaluation):
    regressor, config, _ = model
    errors = correspondence_error(evaluation, predict_all(model, evaluation.images))
    images = list(measure_images)
    rankings = {
        method: landmark_importance(regressor, config, images, 64, 0, method=method)
        for method in ("increase", "precision")
    }
    rows, record = [], {"all": float(errors.mean())}
    for ranking, importance in rankings.items():
        order = np.argsort(-importance, kind="stable")
        tops = [float(errors[order[: max(1, round(s * len(order)))]].mean()) for s in SHARES]
        rows.append([name, ranking, f"{errors.mean():.2f} {unit}", *(f"{t:.2f}" for t in tops)])
        record[ranking] = tops
    return rows, record


def main() -> int:
    rows, record = [], {"machine": machine()}
    model_2d = load_landmark_model(None, ndim=2)
    measure = shepp_logan_population(16, size=128, seed=100)
    evaluation = phantom_subjects(16, size=128, seed=200)
    found, record["2d"] = _rows("2-D phantoms", "px", model_2d, measure.images, evaluation)
    rows += found
    t1, _, _ = load_mni()
    brain = brain_crop(np.asarray(t1.array, dtype=np.float32))
    spacing = tuple(float(s) for s in t1.spacing)
    measure3 = volume_population(brain, 8, size=64, spacing=spacing, seed=100)
    evaluation3 = evaluation_subjects(brain, 8, seed=200, spacing=spacing)
    model_3d = load_landmark_model(None, ndim=3)
    found, record["3d"] = _rows("3-D MNI warps", "mm", model_3d, measure3.images, evaluation3)
    rows += found
    print(machine())
    print("importance measured on training-family warps, landmarks scored on evaluation subjects")
    header = ["model", "ranking", "all landmarks", *(f"top {int(s * 100)} %" for s in SHARES)]
    print(fmt_table(rows, header))
    OUT.mkdir(exist_ok=True)
    (OUT / "landmark_importance.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
