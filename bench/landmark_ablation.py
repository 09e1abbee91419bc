"""Which part of the evaluation family costs a 2-D landmark model most: pose, shape or scanner.

The 16 evaluation phantoms of ``bench/landmark_generalisation.py`` (seed 200) are made again
with parts of ``PHANTOM_VARIATION`` set to zero, and each model's mean correspondence error is
reported plain and with test-time pose refinement (models that store a pose reference).

Usage: python bench/landmark_ablation.py [MODEL ...]   (default: the bundled 2-D model; a few
seconds a model)
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from _common import fmt_table, machine
from landmark_generalisation import refined_all
from landmarks import predict_all

from labelfree.landmarks import evaluation
from labelfree.landmarks.metrics import correspondence_error
from labelfree.landmarks.model import load_landmark_model
from labelfree.landmarks.refine import stored_pose_reference
from labelfree.landmarks.synthetic import shepp_logan_template

NO_POSE = {"rotation_deg": 0.0, "scale": 0.0, "shear": 0.0, "shift_mm": 0.0}
NO_SHAPE = {"displacement_mm": 0.0}
NO_SCANNER = {"bias": 0.0, "gamma": 0.0, "blur_mm": 0.0, "noise": 0.0}
VARIANTS = {
    "full": {},
    "no pose": NO_POSE,
    "no shape": NO_SHAPE,
    "no scanner": NO_SCANNER,
    "pose only": NO_SHAPE | NO_SCANNER,
    "shape only": NO_POSE | NO_SCANNER,
    "scanner only": NO_POSE | NO_SHAPE,
}


def main(paths: list[str]) -> int:
    print(machine())
    template = shepp_logan_template(128)
    rows = []
    for path in paths or [None]:
        model = load_landmark_model(Path(path) if path else None, ndim=2)
        for name, zeros in VARIANTS.items():
            variation = replace(evaluation.PHANTOM_VARIATION, **zeros)
            subjects = evaluation.evaluation_subjects(template, 16, 200, variation=variation)
            plain = predict_all(model, subjects.images)
            row = [
                path or "bundled 2-D",
                name,
                f"{correspondence_error(subjects, plain).mean():.2f} px",
            ]
            if stored_pose_reference(model[1]) is not None:
                refined, share = refined_all(model, subjects.images, plain)
                error = correspondence_error(subjects, refined).mean()
                row.append(f"{error:.2f} px ({share:.0%})")
            rows.append(row + [""] * (4 - len(row)))
    print(fmt_table(rows, ["model", "evaluation subjects", "plain", "pose refined"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
