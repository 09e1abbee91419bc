"""Make, train on and score the synthetic populations behind the bundled landmark models.

Subcommands::

    phantom OUT   warped Shepp-Logan phantoms: OUT/train/*.nrrd, OUT/test/*.nrrd, OUT/truth.npz
    mni OUT       warps of nilearn's MNI152 template at reduced size, same layout
    train DATA MODEL [...]   labelfree.landmarks.train.train_from_files on DATA/train
    evaluate MODEL DATA      correspondence error, registered/unregistered MSE and detection
                             time on DATA/test; written into the model card

The test images are read back from their files, so the scores go through the same
path as a user's data. ``truth.npz`` holds the exact maps of the test images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from labelfree.io import read_image
from labelfree.landmarks.metrics import correspondence_error, registration_mse_ratio
from labelfree.landmarks.model import load_landmark_model, predict_landmarks, save_landmark_model
from labelfree.landmarks.synthetic import (
    SyntheticPopulation,
    population_stats,
    shepp_logan_population,
    volume_population,
)
from labelfree.landmarks.train import train_from_files


def _write_population(pop: SyntheticPopulation, out: Path, n_train: int, stem: str) -> None:
    for part, indices in (("train", range(n_train)), ("test", range(n_train, len(pop.images)))):
        folder = out / part
        folder.mkdir(parents=True, exist_ok=True)
        for i in indices:
            img = sitk.GetImageFromArray(pop.images[i])
            img.SetSpacing(pop.spacing)
            sitk.WriteImage(img, str(folder / f"{stem}_{i:03d}.nrrd"), True)
    test = np.arange(n_train, len(pop.images))
    np.savez(
        out / "truth.npz",
        template=pop.template,
        control=pop.control,
        displaced=pop.displaced[test],
        spacing=np.asarray(pop.spacing),
    )


def _mni_brain() -> tuple[np.ndarray, tuple[float, float, float]]:
    """The MNI152 T1 template (z, y, x), cropped to the brain's bounding box plus 6 mm."""
    from nilearn import datasets

    nifti = datasets.load_mni152_template(resolution=1)
    array = np.asarray(nifti.get_fdata(), dtype=np.float32).transpose(2, 1, 0)
    inside = np.argwhere(array > 0.05 * array.max())
    lo = np.maximum(inside.min(0) - 6, 0)
    hi = np.minimum(inside.max(0) + 7, array.shape)
    crop = array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    spacing = tuple(float(s) for s in np.linalg.norm(nifti.affine[:3, :3], axis=0))
    return crop, spacing


def cmd_phantom(args: argparse.Namespace) -> None:
    pop = shepp_logan_population(args.n_train + args.n_test, size=args.size, seed=args.seed)
    _write_population(pop, args.out, args.n_train, "phantom")
    stats = population_stats(pop)
    (args.out / "stats.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats))


def cmd_mni(args: argparse.Namespace) -> None:
    volume, spacing = _mni_brain()
    pop = volume_population(
        volume,
        args.n_train + args.n_test,
        size=args.size,
        sigma_mm=args.sigma_mm,
        spacing=spacing,
        seed=args.seed,
    )
    _write_population(pop, args.out, args.n_train, "mni")
    print(f"MNI brain crop {volume.shape} (z, y, x) -> {args.size}^3, voxel {pop.spacing} mm")


def cmd_train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    inputs = sorted((args.data / "train").glob("*.nrrd"))
    last = [0.0]

    def report(progress):
        if time.time() - last[0] > 30:
            print(f"{progress.fraction:6.1%} {progress.message}", flush=True)
            last[0] = time.time()

    extra = {
        "learning_rate": args.lr,
        "batch_size": args.batch_size,
        "head": args.head,
        "bending": args.bending,
        "equivariance": args.equivariance,
        "equivariance_px": args.equivariance_px,
        "equivariance_shift_px": args.equivariance_shift_px,
        "equivariance_pose": (args.equivariance_rotation_deg, args.equivariance_log_scale),
        "appearance": args.appearance,
        "prior_fade": None if args.prior_fade < 0 else args.prior_fade,
    }
    if args.lam is not None:
        extra["lam"] = args.lam
    card = {
        "description": args.description,
        "trained_on_data": args.data.name,
        "threads": args.threads,
    }
    train_from_files(
        inputs,
        args.model,
        n_landmarks=args.landmarks,
        epochs=args.epochs,
        seed=args.seed,
        input_size=args.input_size,
        device="cpu",
        progress=report,
        card=card,
        **extra,
    )
    print(f"wrote {args.model}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    regressor, config, card = load_landmark_model(args.model)
    truth = np.load(args.data / "truth.npz")
    files = sorted((args.data / "test").glob("*.nrrd"))
    images = np.stack([read_image(f).array for f in files]).astype(np.float32)
    pop = SyntheticPopulation(
        images,
        truth["template"],
        truth["control"],
        truth["displaced"],
        tuple(truth["spacing"].tolist()),
    )
    start = time.perf_counter()
    landmarks = np.stack([predict_landmarks(regressor, config, im) for im in images])
    per_image = (time.perf_counter() - start) / len(images)
    errors = correspondence_error(pop, landmarks)
    unit = "px" if pop.ndim == 2 else "mm"
    metrics = {
        f"correspondence_error_mean_{unit}": round(float(errors.mean()), 3),
        f"correspondence_error_median_{unit}": round(float(np.median(errors)), 3),
        f"correspondence_error_per_landmark_{unit}": [round(float(e), 3) for e in errors],
        f"unmoved_points_error_mean_{unit}": round(
            float(
                correspondence_error(pop, np.broadcast_to(landmarks[:1], landmarks.shape)).mean()
            ),
            3,
        ),
        "test_images": len(images),
    }
    if pop.ndim == 2:
        metrics["registered_over_unregistered_mse"] = round(
            registration_mse_ratio(images, landmarks, fixed_corners=config["n_fixed"] > 0), 4
        )
    else:
        pairs = np.array([(s, (s + 1) % len(images)) for s in range(len(images))])
        metrics["registered_over_unregistered_mse"] = round(
            registration_mse_ratio(images, landmarks, pairs, config["n_fixed"] > 0), 4
        )
    metrics["detection_seconds_per_test_image"] = round(per_image, 4)
    if args.full_volume:
        volume, _ = _mni_brain()
        predict_landmarks(regressor, config, volume)
        start = time.perf_counter()
        predict_landmarks(regressor, config, volume)
        metrics["detection_seconds_full_volume"] = round(time.perf_counter() - start, 3)
        metrics["full_volume_shape_zyx"] = list(volume.shape)
    try:
        from labelfree.landmarks.redundancy import store_importance
    except ImportError:
        store_importance = None
    if store_importance is not None:
        train_files = sorted((args.data / "train").glob("*.nrrd"))
        train_images = [read_image(f).array for f in train_files]
        importance = store_importance(args.model, train_images, n_pairs=64, seed=0)
        from labelfree.landmarks.refine import store_pose_reference

        reference = store_pose_reference(args.model, train_images)
        metrics["pose_refinement_threshold_px"] = round(reference["threshold_px"], 4)
        regressor, config, card = load_landmark_model(args.model)
        for name, keep in (
            ("importance_at_least_0.1", importance >= 0.1),
            ("top_half_by_importance", importance >= np.median(importance)),
        ):
            metrics[f"correspondence_error_mean_{unit}_{name}"] = round(
                float(errors[keep].mean()), 3
            )
            metrics[f"landmarks_{name}"] = int(keep.sum())
    stats = args.data / "stats.json"
    if stats.is_file():
        metrics["population_stats"] = json.loads(stats.read_text())
    card = {**card, "metrics": metrics, "metrics_threads": args.threads}
    save_landmark_model(args.model, regressor, config, card)
    print(json.dumps({k: v for k, v in metrics.items() if "per_landmark" not in k}, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("phantom")
    p.add_argument("out", type=Path)
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--n-test", type=int, default=30)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=cmd_phantom)
    p = sub.add_parser("mni")
    p.add_argument("out", type=Path)
    p.add_argument("--n-train", type=int, default=60)
    p.add_argument("--n-test", type=int, default=20)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--sigma-mm", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=cmd_mni)
    p = sub.add_parser("train")
    p.add_argument("data", type=Path)
    p.add_argument("model", type=Path)
    p.add_argument("--landmarks", type=int, required=True)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lam", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--head", default="heatmap", choices=("fc", "heatmap"))
    p.add_argument("--bending", type=float, default=0.0)
    p.add_argument(
        "--equivariance", type=float, default=0.0, help="weight of the warp-equivariance term"
    )
    p.add_argument(
        "--equivariance-px", type=float, default=None, help="std of its warps, input pixels"
    )
    p.add_argument(
        "--equivariance-shift-px", type=float, default=0.0, help="std of their global shift"
    )
    p.add_argument(
        "--equivariance-rotation-deg", type=float, default=0.0, help="std of their rotation"
    )
    p.add_argument(
        "--equivariance-log-scale", type=float, default=0.0, help="std of their log-scale per axis"
    )
    p.add_argument(
        "--appearance",
        type=float,
        default=0.0,
        help="strength of scanner-like changes (bias, contrast, blur) of the network's inputs",
    )
    p.add_argument(
        "--prior-fade",
        type=float,
        default=0.25,
        help="share of training over which the heatmap prior fades out; negative keeps it",
    )
    p.add_argument("--description", default="")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate")
    p.add_argument("model", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--full-volume", action="store_true", help="also time the full MNI volume")
    p.set_defaults(func=cmd_evaluate)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
