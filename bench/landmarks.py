"""Landmarks: phantom training time and accuracy, detection time, 3-D accuracy in millimetres.

1. Phantom (2-D): 150 warped Shepp-Logan phantoms, 128 x 128 (labelfree.landmarks.synthetic,
   seed 0): the first 100 train (the trainer holds out 20 % for validation: 80 / 20 as the
   reference), the last 50 test. A regressor with 26 learned landmarks (+ 4 fixed corners) is
   trained from scratch for ``--epochs-2d`` epochs with the bundled model's settings
   (equivariance 3000, no bending; default 10 epochs: a timing run, the bundled model took
   240), seed 0. Reported: training wall and CPU time per epoch and the projection to 240
   epochs; on the test images the mean correspondence error in pixels (landmark k of
   image A and of image B mapped into the common frame through the known warps) and the
   registered / unregistered MSE ratio on 400 seeded test pairs. For scale, the correspondence
   error of "no detection" (the same points in every image: the warps alone) and its ratio to
   ours. Targets: < 1 px, MSE ratio < 0.15, training < 15 min.
2. If a bundled 2-D model exists it is scored on the same test images too.
3. Detection time: ``detect_landmarks`` on the 197 x 233 x 189 MNI152 T1 (model loaded once;
   median of ``--repeats``), and on a 128 x 128 phantom; target < 1 s per volume.
4. 3-D accuracy: warps of the MNI152 T1 cropped to the head (labelfree.landmarks.synthetic.
   volume_population, 64^3, 4 mm control-point std, as the bundled model was trained): the
   bundled 3-D model, or else one trained here for ``--epochs-3d`` epochs on 40 warps, scored on
   20 unseen warps (seed 2): mean correspondence error in mm against the 1.5 mm target, and
   "no detection" for scale; the same for the landmarks that sit inside the head (the warps
   barely move the background near the fixed corners, so landmarks there match easily).

Usage: python bench/landmarks.py [--epochs-2d 10] [--epochs-3d 10] [--repeats 5]
(the run time is mostly training: 6-25 s per 2-D epoch on a 2-core machine, by its load)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from _common import OUT, fmt_table, load_mni, machine

TARGET_PX = 1.0
TARGET_MSE = 0.15
TARGET_TRAIN_S = 15 * 60.0
TARGET_MM = 1.5
TARGET_DETECT_S = 1.0
# The bundled 2-D model's recipe (Resources/Scripts/train_default_landmark_models.sh).
RECIPE_2D = {"epochs": 240, "equivariance": 3000.0, "bending": 0.0}


def predict_all(model, images: np.ndarray) -> np.ndarray:
    """(N, K, D) normalised landmarks of every image."""
    from labelfree.landmarks.model import predict_landmarks

    regressor, config = model[0], model[1]
    return np.stack([predict_landmarks(regressor, config, im) for im in images])


def score(population, landmarks: np.ndarray, pairs: np.ndarray | None) -> dict[str, float]:
    """Correspondence error (mean over landmarks), its no-detection baseline, and MSE ratio."""
    from labelfree.landmarks.metrics import correspondence_error, registration_mse_ratio

    err = float(correspondence_error(population, landmarks).mean())
    fixed = np.broadcast_to(landmarks.mean(axis=0), landmarks.shape)
    null = float(correspondence_error(population, np.ascontiguousarray(fixed)).mean())
    out = {"error": err, "no_detection_error": null}
    if pairs is not None:
        out["mse_ratio"] = float(registration_mse_ratio(population.images, landmarks, pairs))
    return out


def error_row(label: str, s: dict[str, float], unit: str, target: float) -> list[str]:
    """A table row: correspondence error against "no detection" and the target."""
    return [
        label,
        f"{s['error']:.2f} {unit} (no detection: {s['no_detection_error']:.2f} {unit}, "
        f"{s['no_detection_error'] / s['error']:.1f}x worse)",
        f"{target} {unit}",
        f"{target / s['error']:.2f}x",
    ]


def inside_head(population, landmarks: np.ndarray) -> np.ndarray:
    """(K,) True where a landmark's mean common-frame position lies in the head (template
    above 5 % of its maximum): landmarks in the static background are easy to match."""
    from scipy.ndimage import map_coordinates

    common = population.to_common(landmarks).mean(axis=0)
    template = population.template
    index = (common + 1) / 2 * (np.asarray(template.shape[::-1]) - 1)
    values = map_coordinates(template, index[:, ::-1].T, order=1)
    return values > 0.05 * template.max()


def brain_crop(volume: np.ndarray) -> np.ndarray:
    """The MNI152 T1 cropped to the head (> 5 % of the maximum) with a 6-voxel margin,
    as the bundled 3-D model's training volumes were."""
    inside = np.argwhere(volume > 0.05 * volume.max())
    lo = np.maximum(inside.min(0) - 6, 0)
    hi = np.minimum(inside.max(0) + 7, volume.shape)
    return volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]


def bundled(ndim: int):
    """The bundled landmark model for ``ndim``, or None."""
    from labelfree.errors import ModelFileError
    from labelfree.landmarks.model import load_landmark_model

    try:
        return load_landmark_model(None, ndim=ndim)
    except ModelFileError:
        return None


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs-2d", type=int, default=10)
    parser.add_argument("--epochs-3d", type=int, default=10)
    parser.add_argument("--landmarks", type=int, default=26)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-training", action="store_true", help="bundled models only")
    parser.add_argument("--quick", action="store_true", help="tiny populations, 1 epoch (smoke)")
    args = parser.parse_args()
    n_train, n_test, n_train_3d, n_test_3d = (100, 50, 40, 20)
    if args.quick:
        n_train, n_test, n_train_3d, n_test_3d = (10, 6, 5, 3)
        args.epochs_2d = args.epochs_3d = args.repeats = 1

    from labelfree.io import Image
    from labelfree.landmarks.detect import detect_landmarks
    from labelfree.landmarks.synthetic import shepp_logan_population, volume_population
    from labelfree.landmarks.train import train_landmarks

    print("machine:", machine())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows, results = [], {}
    rng = np.random.default_rng(0)

    # 1-2. Phantoms.
    pop = shepp_logan_population(n_train + n_test, size=128, seed=0)
    test = pop.subset(np.arange(n_train, n_train + n_test))
    pairs = rng.choice(n_test, size=(600, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]][:400]
    models_2d = {}
    if not args.skip_training:
        trained = train_landmarks(
            list(pop.images[:n_train]),
            ndim=2,
            n_landmarks=args.landmarks,
            epochs=args.epochs_2d,
            seed=0,
            device="cpu",
            equivariance=RECIPE_2D["equivariance"],
            bending=RECIPE_2D["bending"],
        )
        models_2d[f"trained here, {args.epochs_2d} epochs"] = (trained.regressor, trained.config)
        results["train_2d_s"] = trained.seconds
        per_epoch = trained.seconds / args.epochs_2d
        cpu_per_epoch = trained.cpu_seconds / args.epochs_2d
        rows += [
            [
                f"phantom training, {args.epochs_2d} epochs (wall / CPU)",
                f"{trained.seconds:.0f} s / {trained.cpu_seconds:.0f} s "
                f"({per_epoch:.1f} / {cpu_per_epoch:.1f} s per epoch)",
                f"{TARGET_TRAIN_S:.0f} s",
                f"{TARGET_TRAIN_S / trained.seconds:.2f}x",
            ],
            [
                f"phantom training projected to {RECIPE_2D['epochs']} epochs (wall / CPU)",
                f"{per_epoch * RECIPE_2D['epochs']:.0f} s / "
                f"{cpu_per_epoch * RECIPE_2D['epochs']:.0f} s",
                f"{TARGET_TRAIN_S:.0f} s",
                f"{TARGET_TRAIN_S / (per_epoch * RECIPE_2D['epochs']):.2f}x / "
                f"{TARGET_TRAIN_S / (cpu_per_epoch * RECIPE_2D['epochs']):.2f}x",
            ],
        ]
    b2 = bundled(2)
    if b2 is not None:
        models_2d["bundled landmarks_2d.pt"] = b2[:2]
        card = b2[2]
        rows.append(
            [
                "bundled 2-D model: its training (card; wall / CPU)",
                f"{card.get('training_seconds', float('nan')):.0f} s / "
                f"{card.get('training_cpu_seconds', float('nan')):.0f} s, "
                f"{(card.get('training') or {}).get('epochs', '?')} epochs, "
                f"{card.get('threads', '?')} thread(s)",
                f"{TARGET_TRAIN_S:.0f} s",
                f"{TARGET_TRAIN_S / card.get('training_seconds', float('nan')):.2f}x",
            ]
        )
    for name, model in models_2d.items():
        s = score(test, predict_all(model, test.images), pairs)
        results[f"phantom {name}"] = s
        rows += [
            error_row(f"phantom correspondence error ({name})", s, "px", TARGET_PX),
            [
                f"phantom registered/unregistered MSE ({name})",
                f"{s['mse_ratio']:.3f}",
                f"{TARGET_MSE}",
                f"{TARGET_MSE / s['mse_ratio']:.2f}x",
            ],
        ]

    # 3. Detection time.
    t1, _, _ = load_mni()
    b3 = bundled(3)
    model_3d, where_3d = (b3[:2], "bundled landmarks_3d.pt") if b3 is not None else (None, None)

    # 4. 3-D accuracy on MNI warps.
    spacing = tuple(float(s) for s in t1.spacing)
    brain = brain_crop(np.asarray(t1.array, dtype=np.float32))
    if model_3d is None and not args.skip_training:
        train_pop = volume_population(brain, n_train_3d, size=64, spacing=spacing, seed=0)
        trained3 = train_landmarks(
            list(train_pop.images),
            ndim=3,
            n_landmarks=args.landmarks,
            epochs=args.epochs_3d,
            seed=0,
            device="cpu",
        )
        model_3d = (trained3.regressor, trained3.config)
        where_3d = f"trained here on {n_train_3d} MNI warps, {args.epochs_3d} epochs ({trained3.seconds:.0f} s)"
    if model_3d is not None:
        # Seed 2: the bundled model was trained and scored on seed-1 warps.
        test3 = volume_population(brain, n_test_3d, size=64, spacing=spacing, seed=2)
        landmarks3 = predict_all(model_3d, test3.images)
        s3 = score(test3, landmarks3, None)
        inside = inside_head(test3, landmarks3)
        s3["landmarks_inside_head"] = int(inside.sum())
        results["mni_3d"] = s3
        rows.append(
            error_row(f"3-D correspondence error, MNI warps ({where_3d})", s3, "mm", TARGET_MM)
        )
        if inside.any():
            s3["inside_head"] = score(test3, landmarks3[:, inside], None)
            label = f"... the {inside.sum()} of {inside.size} landmarks inside the head"
            rows.append(error_row(label, s3["inside_head"], "mm", TARGET_MM))
        per_volume = median_seconds(
            lambda: detect_landmarks(t1, model_3d + ({},), device="cpu"), args.repeats
        )
        results["detect_3d_s"] = per_volume
        rows.append(
            [
                f"detection, {' x '.join(map(str, t1.array.shape[::-1]))} volume",
                f"{per_volume * 1000:.0f} ms",
                f"{TARGET_DETECT_S * 1000:.0f} ms",
                f"{TARGET_DETECT_S / per_volume:.1f}x",
            ]
        )
    if models_2d:
        model = next(iter(models_2d.values()))
        phantom = Image(test.images[0], (1.0, 1.0), (0.0, 0.0), np.eye(2))
        per_image = median_seconds(
            lambda: detect_landmarks(phantom, model + ({},), device="cpu"), args.repeats
        )
        results["detect_2d_s"] = per_image
        rows.append(
            [
                "detection, 128 x 128 phantom",
                f"{per_image * 1000:.0f} ms",
                f"{TARGET_DETECT_S * 1000:.0f} ms",
                f"{TARGET_DETECT_S / per_image:.1f}x",
            ]
        )

    print()
    print(fmt_table(rows, ["measure", "value", "target", "target / value (>1 meets)"]))
    OUT.mkdir(exist_ok=True)
    with open(OUT / "landmarks.json", "w") as handle:
        json.dump({"machine": machine(), "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
