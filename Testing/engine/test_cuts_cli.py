"""`labelfree cuts segment` and `labelfree cuts train`: the command-line contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import oblique_volume, random_model_file

from labelfree import cli
from labelfree.cuts.model import load_cuts_model
from labelfree.io import Image, read_image, write_image


@pytest.fixture(scope="module")
def grey_model(tmp_path_factory):
    return random_model_file(tmp_path_factory.mktemp("m") / "grey.pt")


def run(*argv):
    return cli.main(["cuts", *map(str, argv)])


def test_segment_writes_levels_and_summary_in_the_input_geometry(tmp_path, grey_model, capsys):
    volume = oblique_volume()
    source = write_image(volume, tmp_path / "in.nrrd")
    out = tmp_path / "out"
    code = run(
        "segment",
        source,
        "--out",
        out,
        "--model",
        grey_model,
        "--device",
        "cpu",
        "--seed",
        0,
        "--max-levels",
        4,
    )
    assert code == 0
    assert "summary.json" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"levels", "persistent", "seconds", "model"}
    counts = [level["clusters"] for level in summary["levels"]]
    assert 1 <= len(counts) <= 4 and counts == sorted(counts)
    assert summary["model"]["trained_on"] == "random (tests)"
    assert summary["seconds"]["total"] > 0
    files = [level["file"] for level in summary["levels"]] + [summary["persistent"]]
    assert files[0] == "level_00.nrrd"
    for name, count in zip(files, [*counts, None], strict=True):
        back = read_image(out / name)
        assert back.array.shape == volume.array.shape
        np.testing.assert_allclose(back.spacing, volume.spacing, atol=1e-6)
        np.testing.assert_allclose(back.origin, volume.origin, atol=1e-5)
        np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)
        if count is not None:
            np.testing.assert_array_equal(np.unique(back.array), np.arange(1, count + 1))
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_segment_is_reproducible_and_replaces_an_earlier_result(tmp_path, grey_model):
    source = write_image(oblique_volume(), tmp_path / "in.nii.gz")
    out = tmp_path / "out"
    stale = out / "level_37.nrrd"
    out.mkdir()
    stale.write_text("from an earlier run")
    args = ("segment", source, "--out", out, "--model", grey_model, "--device", "cpu")
    assert run(*args, "--seed", 5, "--max-levels", 3) == 0
    first = {p.name: read_image(p).array for p in out.glob("*.nrrd")}
    assert not stale.exists()
    assert run(*args, "--seed", 5, "--max-levels", 3) == 0
    for name, labels in first.items():
        np.testing.assert_array_equal(read_image(out / name).array, labels)


def test_segment_rgb_png_writes_2d_label_images(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :48]
    rgb = np.stack([xx * 5, yy * 6, (xx + yy) * 2], axis=-1) % 256
    rgb = (rgb + rng.integers(0, 10, rgb.shape)).astype(np.uint8)
    png = tmp_path / "photo.png"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(png))
    model = random_model_file(tmp_path / "rgb.pt", channels=3)
    out = tmp_path / "out"
    code = run(
        "segment",
        png,
        "--out",
        out,
        "--model",
        model,
        "--device",
        "cpu",
        "--method",
        "kmeans",
        "--k",
        3,
        "--quiet",
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kmeans"] == "kmeans.nrrd" and summary["method"] == "kmeans"
    for name in [level["file"] for level in summary["levels"]] + ["kmeans.nrrd"]:
        back = read_image(out / name)
        assert back.array.shape == (40, 48) and back.channels == 1


@pytest.mark.parametrize(
    "case, message",
    [
        ("constant", "constant"),
        ("nan", "NaN"),
        ("huge", "rescale"),
        ("k", "k from 2 to 255"),
        ("texture", "texture_scale must be >= 0"),
        ("tiny", "17 x 17"),
        ("rgb", "grayscale"),
        ("missing", "not found"),
        ("garbage_model", "not a readable LabelFree model"),
        ("foreign_model", "not a LabelFree model"),
    ],
)
def test_segment_bad_input_exits_2_and_writes_nothing(tmp_path, grey_model, capsys, case, message):
    volume = oblique_volume()
    model = grey_model
    if case == "constant":
        volume.array[:] = 3.0
    elif case == "nan":
        volume.array[2, 3, 4] = np.nan
    elif case == "huge":
        volume = volume.with_array(volume.array.astype(np.float64) * 1e300)
    elif case == "tiny":
        volume = Image(volume.array[:, :16, :20], volume.spacing, volume.origin, volume.direction)
    source = tmp_path / "in.nrrd"
    if case == "rgb":
        source = tmp_path / "in.png"
        rgb = np.random.default_rng(0).integers(0, 255, (30, 30, 3), dtype=np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(source))
    elif case != "missing":
        write_image(volume, source)
    if case == "garbage_model":
        model = tmp_path / "garbage.pt"
        model.write_bytes(b"PK\x03\x04 truncated zip" * 10)
    elif case == "foreign_model":
        model = tmp_path / "foreign.pt"
        torch.save({"encoder": torch.zeros(4)}, model)
    out = tmp_path / "out"
    extra = {"k": ("--method", "kmeans", "--k", 100000), "texture": ("--texture-scale", -2)}
    extra = extra.get(case, ())
    code = run(
        "segment", source, "--out", out, "--model", model, "--device", "cpu", "--quiet", *extra
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "labelfree: error:" in err and message in err
    assert "Traceback" not in err
    assert not (out / "summary.json").exists()


def test_segment_refuses_a_multicomponent_volume(tmp_path, grey_model, capsys):
    vector = sitk.GetImageFromArray(np.ones((6, 20, 20, 2), np.float32), isVector=True)
    source = tmp_path / "vector.nrrd"
    sitk.WriteImage(vector, str(source))
    assert run("segment", source, "--out", tmp_path / "o", "--model", grey_model) == 2
    assert "components" in capsys.readouterr().err


def test_train_writes_a_loadable_model(tmp_path, capsys):
    pytest.importorskip("labelfree.cuts.train")
    source = write_image(oblique_volume(depth=6, size=40), tmp_path / "train.nrrd")
    out = tmp_path / "mine.pt"
    code = run("train", source, "--out", out, "--epochs", 1, "--seed", 0, "--device", "cpu")
    assert code == 0
    captured = capsys.readouterr()
    assert str(out) in captured.out
    assert "[train]" in captured.err
    model, config, card = load_cuts_model(out, 1)
    assert model.in_channels == 1 and "normalisation" in config
    assert card.get("kind") == "cuts"


def test_segment_a_cohort_goes_on_past_a_bad_case_and_reruns_only_what_is_missing(
    tmp_path, grey_model, capsys, monkeypatch
):
    from labelfree.cuts import model as cuts_model

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for index in range(2):
        write_image(oblique_volume(depth=6 + index), cohort / f"case{index}.nrrd")
    whole = write_image(oblique_volume(), tmp_path / "whole.nii.gz").read_bytes()
    (cohort / "broken.nii.gz").write_bytes(whole[: len(whole) // 2])
    (cohort / "notes.txt").write_text("not an image")
    loads = []
    real_load = cuts_model.load_cuts_model
    monkeypatch.setattr(
        cuts_model, "load_cuts_model", lambda *a, **k: loads.append(a) or real_load(*a, **k)
    )
    out = tmp_path / "out"
    args = ("segment", cohort, "--out", out, "--model", grey_model, "--device", "cpu")
    assert run(*args, "--max-levels", 2) == 3  # finished, one case failed
    captured = capsys.readouterr()
    assert "broken.nii.gz skipped" in captured.err and "truncated" in captured.err
    assert "case 3 of 3" in captured.err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "case0",
        "case1",
        "provenance.json",
    ]
    assert len(loads) == 1  # one model load for the whole cohort
    for index in range(2):
        summary = json.loads((out / f"case{index}" / "summary.json").read_text())
        assert (
            read_image(out / f"case{index}" / summary["levels"][0]["file"]).array.shape[0]
            == 6 + index
        )
    record = json.loads((out / "provenance.json").read_text())
    assert [Path(i["path"]).name for i in record["inputs"]] == [
        "broken.nii.gz",
        "case0.nrrd",
        "case1.nrrd",
    ]

    stamp = (out / "case0" / "summary.json").stat().st_mtime_ns
    (cohort / "broken.nii.gz").unlink()
    assert run(*args, "--max-levels", 2) == 0
    assert "2 kept from an earlier run" in capsys.readouterr().out
    assert (out / "case0" / "summary.json").stat().st_mtime_ns == stamp
    assert run(*args, "--max-levels", 2, "--overwrite") == 0
    assert (out / "case0" / "summary.json").stat().st_mtime_ns != stamp


def test_train_stops_at_a_bad_file_by_name_or_leaves_it_out(tmp_path, capsys):
    """Every training file is read before any training: a corrupt one stops the run at once,
    by name, or is left out with --skip-bad and listed in the card beside the data hashes."""
    import hashlib

    good = write_image(oblique_volume(depth=6, size=40), tmp_path / "good.nrrd")
    whole = write_image(oblique_volume(depth=6, size=40), tmp_path / "whole.nii.gz").read_bytes()
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(whole[: len(whole) // 2])
    args = ["train", good, bad, "--epochs", 1, "--device", "cpu", "--quiet"]
    assert run(*args, "--out", tmp_path / "stopped.pt") == 2
    assert "broken.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "stopped.pt").exists()
    out = tmp_path / "kept.pt"
    assert run(*args, "--out", out, "--skip-bad") == 0
    card = json.loads(out.with_name("kept.card.json").read_text())
    assert [Path(s["file"]).name for s in card["skipped_inputs"]] == ["broken.nii.gz"]
    assert card["data"][0]["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert card["memory_estimate_bytes"] > 0
