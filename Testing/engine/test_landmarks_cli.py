"""``labelfree landmarks train / detect / importance`` end to end, and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from labelfree.cli import main
from labelfree.landmarks.model import load_landmark_model
from labelfree.landmarks.synthetic import shepp_logan_population
from labelfree.markups import SCHEMA_URL, read_landmark_table, read_markups

SPACING = (0.8, 1.2)
ORIGIN = (10.0, -20.0)


def _write_phantoms(folder, n=4, size=48):
    """Warped phantoms as 2-D NRRD files with a non-unit spacing and a flipped axis."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(shepp_logan_population(n, size=size, seed=3).images):
        img = sitk.GetImageFromArray(image)
        img.SetSpacing(SPACING)
        img.SetOrigin(ORIGIN)
        img.SetDirection((1.0, 0.0, 0.0, -1.0))
        paths.append(folder / f"phantom-{i}.nrrd")
        sitk.WriteImage(img, str(paths[-1]))
    return paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained through the CLI (2 epochs, 64-pixel input)."""
    root = tmp_path_factory.mktemp("cli")
    paths = _write_phantoms(root / "images")
    model = root / "lm.pt"
    argv = ["landmarks", "train", *map(str, paths), "--out", str(model), "--landmarks", "5"]
    argv += ["--epochs", "2", "--input-size", "64", "--device", "cpu", "--importance-pairs", "6"]
    argv += ["--equivariance", "10"]
    assert main(argv) == 0
    return root, paths, model


def test_train_writes_model_with_importance(trained):
    _, _, model = trained
    _, config, card = load_landmark_model(model)
    assert config["ndim"] == 2 and config["n_landmarks"] == 5 and config["input_size"] == 64
    importance = np.asarray(config["importance"])
    assert importance.shape == (5,)
    assert importance.max() == pytest.approx(1.0) and importance.min() >= 0.0
    assert card["importance"]["method"] == "precision"
    assert card["training"]["equivariance"] == 10.0
    assert card["training"]["equivariance_px"] == 4.0  # the 2-D default
    assert model.with_name("lm.card.json").is_file()


def test_detect_single_file_in_physical_space(trained, tmp_path):
    _, paths, model = trained
    out = tmp_path / "one.mrk.json"
    assert (
        main(["landmarks", "detect", str(paths[0]), "--model", str(model), "--out", str(out)]) == 0
    )
    doc = json.loads(out.read_text())
    assert doc["@schema"] == SCHEMA_URL
    markup = doc["markups"][0]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    points, names, importance = read_markups(out)
    assert names == ["LM-01", "LM-02", "LM-03", "LM-04", "LM-05"]
    assert np.nanmax(importance) == pytest.approx(1.0, abs=1e-4)
    # Inside the image's physical extent: x in [10, 10 + 47 * 0.8], y in [-20 - 47 * 1.2, -20].
    assert np.all(points[:, 0] >= ORIGIN[0] - 1e-6) and np.all(points[:, 0] <= 10 + 47 * 0.8 + 1e-6)
    assert np.all(points[:, 1] <= ORIGIN[1] + 1e-6) and np.all(
        points[:, 1] >= -20 - 47 * 1.2 - 1e-6
    )
    np.testing.assert_array_equal(points[:, 2], 0.0)
    # The same landmarks as CSV (RAS) and .fcsv (LPS) agree.
    for suffix in (".csv", ".fcsv"):
        other = tmp_path / f"one{suffix}"
        assert (
            main(["landmarks", "detect", str(paths[0]), "--model", str(model), "--out", str(other)])
            == 0
        )
        np.testing.assert_allclose(read_markups(other)[0], points, atol=1e-6)
    kept = tmp_path / "top2.csv"
    argv = ["landmarks", "detect", str(paths[0]), "--model", str(model), "--out", str(kept)]
    assert main([*argv, "--keep", "2"]) == 0
    _, kept_names, kept_importance = read_markups(kept)
    assert len(kept_names) == 2 and set(kept_names) <= set(names)
    assert kept_importance.max() == pytest.approx(1.0, abs=1e-4)


def test_detect_folder_writes_one_file_per_image_and_a_table(trained, tmp_path):
    root, paths, model = trained
    out = tmp_path / "batch"
    argv = ["landmarks", "detect", str(root / "images"), "--model", str(model), "--out", str(out)]
    assert main([*argv, "--format", "fcsv"]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [f"phantom-{i}.fcsv" for i in range(len(paths))] + ["landmarks.csv", "provenance.json"]
    )
    table = read_landmark_table(out / "landmarks.csv")
    assert list(table) == [f"phantom-{i}" for i in range(len(paths))]
    single, _, _ = read_markups(out / "phantom-2.fcsv")
    np.testing.assert_allclose(table["phantom-2"][0], single, atol=1e-6)


def test_importance_command_rewrites_the_model(trained, tmp_path, capsys):
    _, paths, model = trained
    copy = tmp_path / "copy.pt"
    copy.write_bytes(model.read_bytes())
    argv = ["landmarks", "importance", str(copy), *map(str, paths[:3]), "--method", "reference"]
    assert main([*argv, "--pairs", "3"]) == 0
    _, config, card = load_landmark_model(copy)
    assert config["importance_method"] == "reference" and card["importance"]["pairs"] == 3
    assert "LM-0" in capsys.readouterr().out


def test_bad_inputs_exit_2_and_write_nothing(trained, tmp_path, capsys):
    _, paths, model = trained
    out = tmp_path / "never"

    def fails(argv, message):
        assert main(argv) == 2
        assert message in capsys.readouterr().err

    fails(
        [
            "landmarks",
            "train",
            *map(str, paths),
            "--out",
            str(out / "m.pt"),
            "--landmarks",
            "100000",
        ],
        "too many",
    )
    fails(
        ["landmarks", "train", str(paths[0]), "--out", str(out / "m.pt"), "--landmarks", "3"],
        "at least two",
    )
    fails(
        ["landmarks", "train", *map(str, paths), "--out", str(out / "m.pt"), "--landmarks", "3"]
        + ["--equivariance", "-1"],
        "must be 0 (off) or positive",
    )
    fails(
        ["landmarks", "detect", str(paths[0]), "--model", str(model), "--out", str(out / "a.txt")],
        "Unknown landmark file type",
    )
    fails(
        [
            "landmarks",
            "detect",
            str(paths[0]),
            "--model",
            str(model),
            "--out",
            str(out / "a.csv"),
            "--keep",
            "9",
        ],
        "keep must be between 1 and 5",
    )
    volume = tmp_path / "vol.nrrd"
    sitk.WriteImage(sitk.Image(8, 9, 10, sitk.sitkFloat32), str(volume))
    fails(
        [
            "landmarks",
            "detect",
            str(volume),
            "--model",
            str(model),
            "--out",
            str(out / "v.mrk.json"),
        ],
        "2-D landmark model but the image is 3-D",
    )
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    fails(
        [
            "landmarks",
            "detect",
            str(paths[0]),
            "--model",
            str(junk),
            "--out",
            str(out / "j.mrk.json"),
        ],
        "not a readable LabelFree model",
    )
    fails(
        [
            "landmarks",
            "detect",
            str(tmp_path / "missing.nrrd"),
            "--model",
            str(model),
            "--out",
            str(out / "m.csv"),
        ],
        "not found",
    )
    fails(
        [
            "landmarks",
            "detect",
            *map(str, paths[:2]),
            "--model",
            str(model),
            "--out",
            str(out / "b.csv"),
        ],
        "must be a folder",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "case, words",
    [("constant", "constant"), ("complex", "complex"), ("huge", "rescale")],
)
def test_detect_and_train_refuse_images_without_usable_intensities(
    trained, tmp_path, capsys, case, words
):
    _, paths, model = trained
    phantom = sitk.GetArrayFromImage(sitk.ReadImage(str(paths[0])))
    bad = {
        "constant": np.full(phantom.shape, 7.0, np.float32),
        "complex": (phantom + 1j * phantom).astype(np.complex64),
        "huge": phantom.astype(np.float64) * 1e300,
    }[case]
    path = tmp_path / "bad.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(bad), str(path))
    out = tmp_path / "bad.mrk.json"
    assert main(["landmarks", "detect", str(path), "--model", str(model), "--out", str(out)]) == 2
    assert words in capsys.readouterr().err and not out.exists()
    argv = ["landmarks", "train", str(paths[1]), str(path), "--out", str(tmp_path / "m.pt")]
    assert main([*argv, "--landmarks", "3", "--epochs", "1", "--input-size", "64"]) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "m.pt").exists()


def test_detect_keeps_the_contrast_of_int64_values_near_1e17(trained, tmp_path):
    _, paths, model = trained
    phantom = sitk.GetArrayFromImage(sitk.ReadImage(str(paths[0])))
    shifted = (np.round(phantom * 1000).astype(np.int64) + 10**17).astype(np.int64)
    outputs = []
    for name, array in (("plain", np.round(phantom * 1000)), ("shifted", shifted)):
        source = tmp_path / f"{name}.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(source))
        out = tmp_path / f"{name}.mrk.json"
        assert (
            main(["landmarks", "detect", str(source), "--model", str(model), "--out", str(out)])
            == 0
        )
        outputs.append(read_markups(out)[0])
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-3)  # mm
