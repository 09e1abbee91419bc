"""Landmarks as a registration tool: points and a label map carried from the MNI152 template
to subjects it was warped into, against SimpleITK affine and demons, side by side.

Subjects: ``labelfree.landmarks.evaluation.evaluation_subjects`` of the 1 mm MNI152 T1 (a warp
and scanner family that no trainer draws: rotation up to 8 degrees per axis, anisotropic
scale 0.93-1.07, shear, shift up to 6 mm, a dense 3 mm RMS displacement of 24 mm correlation,
bias field, gamma, blur and noise), ``--subjects`` of them, seed 0. Every subject's exact map
is known, so the truth is exact.

What is carried, template to subject:
- 32 probe points spread over the brain (k-means centres of the voxels where grey or white
  matter probability > 0.5, seed 0): mean distance to where they truly are, mm;
- the grey/white matter label map (the larger probability > 0.5): Dice against the template's
  labels pulled through the exact map, mean of the two tissues.

Methods:
- none (the template's positions);
- LabelFree: the bundled 3-D model detects its landmarks on the template and on the
  subject, and ``labelfree.landmarks.registration`` carries through them: spline through
  every landmark (smoothing 0), least-squares affine, smoothing spline cross-validated with
  equal weights, and the default (cross-validated, weighted by precision importance);
- the default spline through the *exact* images of the template's landmarks (what the
  landmark layout would allow with perfect detection);
- SimpleITK: affine registration (Mattes mutual information, 2 mm, 3 levels) and that plus
  fast symmetric forces demons at 2 mm after histogram matching.

Also reported: the correspondence error of the detected landmarks over all subject pairs
(``labelfree.landmarks.metrics.correspondence_error``), mm.

Usage: python bench/landmark_registration.py [--subjects 6]   (about 5 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import SimpleITK as sitk  # noqa: N813
from _common import OUT, fmt_table, load_mni, machine

from labelfree.io import Image, to_sitk
from labelfree.landmarks.evaluation import evaluation_subjects
from labelfree.landmarks.metrics import correspondence_error
from labelfree.landmarks.model import load_landmark_model
from labelfree.landmarks.registration import (
    carry_label_map,
    fit_landmark_transform,
    landmark_pairs,
)

N_PROBES = 32


def probe_points(t1: Image, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """(32, 3) LPS mm: k-means centres of the brain's voxels, moved to the nearest one."""
    from sklearn.cluster import KMeans

    brain = np.argwhere((gm > 0.5) | (wm > 0.5))[:, ::-1]  # (x, y, z)
    sample = brain[np.random.default_rng(0).choice(len(brain), 20000, replace=False)]
    centres = KMeans(N_PROBES, n_init=4, random_state=0).fit(sample).cluster_centers_
    nearest = brain[[np.argmin(((brain - c) ** 2).sum(1)) for c in centres]]
    return t1.index_to_physical(nearest.astype(float))


def tissue_labels(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """1 grey matter, 2 white matter, 0 elsewhere (uint8)."""
    labels = np.zeros(gm.shape, np.uint8)
    labels[(gm > 0.5) & (gm >= wm)] = 1
    labels[(wm > 0.5) & (wm > gm)] = 2
    return labels


def to_normalised(image: Image, points_lps: np.ndarray) -> np.ndarray:
    sizes = np.asarray(image.spatial_shape[::-1], float)
    return image.physical_to_index(points_lps) / (sizes - 1) * 2 - 1


def from_normalised(image: Image, normalised: np.ndarray) -> np.ndarray:
    sizes = np.asarray(image.spatial_shape[::-1], float)
    return image.index_to_physical((normalised + 1) / 2 * (sizes - 1))


def true_labels(subjects, i: int, labels: np.ndarray) -> np.ndarray:
    """The template's labels pulled through subject ``i``'s exact map (nearest voxel)."""
    shape = labels.shape
    axes = [np.linspace(-1, 1, n) for n in shape]
    out = np.empty(shape, labels.dtype)
    for z in range(shape[0]):
        grid = np.stack(np.meshgrid(axes[2], axes[1], indexing="xy"), -1).reshape(-1, 2)
        points = np.concatenate([grid, np.full((len(grid), 1), axes[0][z])], 1)
        common = subjects.to_common(points[None], [i])[0]
        index = np.rint((common + 1) / 2 * (np.asarray(shape[::-1]) - 1)).astype(int)
        index = np.clip(index, 0, np.asarray(shape[::-1]) - 1)
        out[z] = labels[index[:, 2], index[:, 1], index[:, 0]].reshape(shape[1:])
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([2 * ((a == k) & (b == k)).sum() / ((a == k).sum() + (b == k).sum())
                          for k in (1, 2)]))  # fmt: skip


def sitk_registrations(fixed: Image, moving: Image) -> dict[str, tuple[sitk.Transform, float]]:
    """Subject (fixed) to template (moving) transforms, affine then affine + demons, with
    their cumulative seconds."""
    fixed_2mm = _at_2mm(to_sitk(fixed))
    moving_2mm = _at_2mm(to_sitk(moving))
    start = time.perf_counter()
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed=0)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200, relaxationFactor=0.7)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    initial = sitk.CenteredTransformInitializer(
        fixed_2mm,
        moving_2mm,
        sitk.AffineTransform(3),
        sitk.CenteredTransformInitializerFilter.GEOMETRY,
    )
    reg.SetInitialTransform(initial, inPlace=False)
    affine = reg.Execute(fixed_2mm, moving_2mm)
    t_affine = time.perf_counter() - start
    resampled = sitk.Resample(moving_2mm, fixed_2mm, affine, sitk.sitkLinear, 0.0)
    matched = sitk.HistogramMatching(resampled, fixed_2mm, 128, 7, True)
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(50)
    demons.SetStandardDeviations(1.5)
    field = demons.Execute(fixed_2mm, matched)
    composite = sitk.CompositeTransform(affine)
    composite.AddTransform(
        sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    )
    return {
        "affine": (affine, t_affine),
        "demons": (composite, time.perf_counter() - start),
    }


def _at_2mm(image: sitk.Image) -> sitk.Image:
    image = sitk.Cast(image, sitk.sitkFloat32)
    size = [
        int(round(n * s / 2.0)) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)
    ]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                         (2.0, 2.0, 2.0), image.GetDirection(), 0.0)  # fmt: skip


def sitk_carry_points(transform: sitk.Transform, affine: sitk.Transform, points: np.ndarray):
    """Template points to the subject: invert subject-to-template ``transform`` by a
    fixed-point iteration preconditioned with its affine part ``affine``."""
    affine = _affine_of(affine)
    inverse = np.linalg.inv(np.asarray(affine.GetMatrix()).reshape(3, 3))
    start = affine.GetInverse()
    out = []
    for q in points:
        p = np.asarray(start.TransformPoint(tuple(q)))
        for _ in range(50):
            step = inverse @ (np.asarray(transform.TransformPoint(tuple(p))) - q)
            p = p - step
            if np.abs(step).max() < 1e-4:
                break
        out.append(p)
    return np.asarray(out)


def _affine_of(transform: sitk.Transform) -> sitk.AffineTransform:
    """The affine transform that registration returns, unwrapped from its composite."""
    while transform.GetName() == "CompositeTransform":
        transform = sitk.CompositeTransform(transform).GetNthTransform(0)
    return sitk.AffineTransform(transform)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=6)
    args = parser.parse_args()
    t1, gm, wm = load_mni()
    template = t1.with_array(np.asarray(t1.array, np.float32))
    print(machine())
    start = time.perf_counter()
    subjects = evaluation_subjects(template.array, args.subjects, seed=0, spacing=t1.spacing)
    print(
        f"{args.subjects} subjects of the evaluation family in {time.perf_counter() - start:.0f} s"
    )
    probes = probe_points(t1, gm, wm)
    labels = tissue_labels(gm, wm)
    labels_image = t1.with_array(labels)
    model = load_landmark_model(None, ndim=3)
    probes_n = to_normalised(template, probes)
    errors: dict[str, list[float]] = {}
    dices: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    found_normalised = []

    def record(name, carried_points, carried_labels, truth_points, truth_labels, took=None):
        errors.setdefault(name, []).append(
            float(np.linalg.norm(carried_points - truth_points, axis=1).mean())
        )
        dices.setdefault(name, []).append(dice(carried_labels, truth_labels))
        if took is not None:
            seconds.setdefault(name, []).append(took)

    for i in range(args.subjects):
        subject = t1.with_array(subjects.images[i])
        truth = from_normalised(subject, subjects.from_common(probes_n, [i])[0])
        truth_labels = true_labels(subjects, i, labels)
        record("none", probes, labels, truth, truth_labels)
        began = time.perf_counter()
        source, target, weights = landmark_pairs(template, subject, model, device="cpu")
        detect_s = time.perf_counter() - began
        found_normalised.append(to_normalised(subject, target))
        exact = from_normalised(
            subject, subjects.from_common(to_normalised(template, source), [i])[0]
        )
        variants = {
            "LabelFree, spline through every landmark": (target, "tps", 0.0, None),
            "LabelFree, least-squares affine": (target, "affine", "auto", None),
            "LabelFree, smoothing spline, equal weights": (target, "tps", "auto", None),
            "LabelFree, smoothing spline, precision weights (default)": (
                target, "tps", "auto", weights),
            "spline through the exact landmark images": (exact, "tps", "auto", weights),
        }  # fmt: skip
        for name, (to, kind, smoothing, w) in variants.items():
            began = time.perf_counter()
            transform = fit_landmark_transform(source, to, kind, smoothing, w)
            carried_labels = carry_label_map(labels_image, source, to, subject, kind, smoothing, w)
            took = time.perf_counter() - began + detect_s
            record(name, transform(probes), carried_labels.array, truth, truth_labels, took)
        registered = sitk_registrations(subject, template)
        affine_part = registered["affine"][0]
        for name, (transform, took) in registered.items():
            carried = sitk.Resample(
                to_sitk(labels_image), to_sitk(subject), transform, sitk.sitkNearestNeighbor, 0
            )
            points = sitk_carry_points(transform, affine_part, probes)
            carried_array = sitk.GetArrayFromImage(carried)
            record("SimpleITK affine" + (" + demons" if name == "demons" else ""),
                   points, carried_array, truth, truth_labels, took)  # fmt: skip
        print(f"subject {i + 1}/{args.subjects} done ({time.perf_counter() - start:.0f} s)")

    corr = float(correspondence_error(subjects, np.stack(found_normalised)).mean())
    rows = [
        [
            name,
            f"{np.mean(errors[name]):.2f}",
            f"{np.mean(dices[name]):.3f}",
            f"{np.mean(seconds[name]):.1f} s" if name in seconds else "",
        ]
        for name in errors
    ]
    print(
        f"landmark correspondence over subject pairs: {corr:.2f} mm ({found_normalised[0].shape[0]} landmarks)"
    )
    print(fmt_table(rows, ["method", "probe error (mm)", "GM/WM Dice", "time per subject"]))
    OUT.mkdir(exist_ok=True)
    record_out = {
        "machine": machine(),
        "subjects": args.subjects,
        "landmark_correspondence_mm": corr,
        "probe_error_mm": {k: float(np.mean(v)) for k, v in errors.items()},
        "dice": {k: float(np.mean(v)) for k, v in dices.items()},
        "seconds": {k: float(np.mean(v)) for k, v in seconds.items()},
    }
    (OUT / "landmark_registration.json").write_text(json.dumps(record_out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
