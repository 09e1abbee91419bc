"""Shared engine plumbing: geometry-preserving I/O, safe model files, devices, CLI."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from labelfree import cli
from labelfree.cuts.model import load_cuts_model
from labelfree.devices import resolve_device
from labelfree.errors import InputError, ModelFileError
from labelfree.io import Image, lps_to_ras, read_image, write_image
from labelfree.landmarks.model import load_landmark_model
from labelfree.modelfile import ModelFile, bundled_model_path, load_model, save_model


def oblique_volume() -> Image:
    angle = np.deg2rad(30)
    direction = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    return Image(array, (0.5, 0.7, 2.0), (10.0, -20.0, 5.0), direction)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_volume_round_trip_keeps_geometry(tmp_path, suffix):
    vol = oblique_volume()
    out = write_image(vol, tmp_path / f"v{suffix}")
    back = read_image(out)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-6)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert out.stat().st_mode & 0o044, "written files must be readable by others (not 0600)"


def test_index_to_physical_matches_simpleitk():
    vol = oblique_volume()
    from labelfree.io import to_sitk

    img = to_sitk(vol)
    index = np.array([[1.0, 2.0, 3.0], [0.5, 4.0, 1.5]])
    expected = [img.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in index]
    np.testing.assert_allclose(vol.index_to_physical(index), expected, atol=1e-9)
    np.testing.assert_allclose(vol.physical_to_index(expected), index, atol=1e-9)
    np.testing.assert_allclose(lps_to_ras(lps_to_ras(expected)), expected)


def test_rgb_png_reads_as_three_channels(tmp_path):
    rgb = (np.random.default_rng(0).random((8, 9, 3)) * 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "c.png"))
    img = read_image(tmp_path / "c.png")
    assert img.channels == 3 and img.ndim == 2 and img.spatial_shape == (8, 9)


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.nrrd")
    (tmp_path / "junk.nrrd").write_text("not an image")
    with pytest.raises(InputError, match="Could not read"):
        read_image(tmp_path / "junk.nrrd")
    with pytest.raises(InputError, match="DICOM"):
        read_image(tmp_path)


def test_four_d_input_is_refused(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.float32))
    sitk.WriteImage(img, str(tmp_path / "t.nrrd"))
    with pytest.raises(InputError, match="components per voxel"):
        read_image(tmp_path / "t.nrrd")


def test_model_file_round_trip_and_card(tmp_path):
    net = torch.nn.Linear(3, 2)
    path = save_model(
        tmp_path / "m.pt",
        ModelFile(
            "cuts",
            {"in_channels": 1, "mean": np.float32(0.5)},
            {"trained_on": "x", "torch": torch.__version__, "sizes": np.arange(2)},
            net.state_dict(),
        ),
    )
    loaded = load_model(path, kind="cuts")
    assert loaded.config == {"in_channels": 1, "mean": 0.5}
    assert loaded.card["torch"] == str(torch.__version__) and loaded.card["sizes"] == [0, 1]
    assert loaded.card["trained_on"] == "x" and loaded.card["engine_version"]
    torch.testing.assert_close(loaded.state_dict["weight"], net.weight.detach())
    assert (tmp_path / "m.card.json").is_file()
    with pytest.raises(ModelFileError, match="'cuts' model but a 'landmarks'"):
        load_model(path, kind="landmarks")


class _Boom:
    def __reduce__(self):
        return (print, ("code ran",))


def test_model_files_never_execute_code(tmp_path, capsys):
    bad = tmp_path / "evil.pt"
    torch.save({"format": "labelfree-model", "payload": _Boom()}, bad)
    with pytest.raises(ModelFileError, match="never executed"):
        load_model(bad)
    assert "code ran" not in capsys.readouterr().out
    (tmp_path / "trunc.pt").write_bytes(bad.read_bytes()[:50])
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "trunc.pt")
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "pickle.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ModelFileError, match="not a LabelFree model"):
        load_model(tmp_path / "foreign.pt")


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(InputError, match="Unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            resolve_device("cuda")


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert "labelfree" in capsys.readouterr().out


def test_ras_affine_conversion_matches_simpleitk_reading_the_nifti(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    from labelfree.io import image_from_ras_affine

    affine = np.array(
        [[0.0, -1.2, 0.0, 30.0], [0.9, 0.0, 0.0, -12.0], [0.0, 0.0, 2.5, 7.0], [0, 0, 0, 1]]
    )
    array_xyz = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(array_xyz, affine), tmp_path / "v.nii.gz")
    expected = read_image(tmp_path / "v.nii.gz")
    converted = image_from_ras_affine(array_xyz, affine)
    np.testing.assert_array_equal(converted.array, expected.array)
    np.testing.assert_allclose(converted.spacing, expected.spacing, atol=1e-5)
    np.testing.assert_allclose(converted.origin, expected.origin, atol=1e-4)
    np.testing.assert_allclose(converted.direction, expected.direction, atol=1e-5)


_BAD_FIELDS = {
    "card a string": lambda p: p.update(card="hello"),
    "config None": lambda p: p.update(config=None),
    "no state_dict": lambda p: p.pop("state_dict"),
    "state_dict a list": lambda p: p.update(state_dict=[1, 2]),
    "format_version '1'": lambda p: p.update(format_version="1"),
    "format_version 0": lambda p: p.update(format_version=0),
    "kind None": lambda p: p.update(kind=None),
}
_BAD_CONFIG = {
    "cuts_mr.pt": {"embed_dim": -4, "in_channels": 2, "normalisation": {"method": "zzz"}},
    "landmarks_2d.pt": {"input_size": 0, "n_landmarks": -1, "ndim": 7, "importance": "x"},
}


@pytest.mark.parametrize("bundled", ["cuts_mr.pt", "landmarks_2d.pt"])
def test_model_files_with_bad_fields_are_refused_with_the_model_file_message(
    tmp_path, bundled, capsys
):
    """Files of the project's own format, edited or damaged: a message, never a crash."""
    import copy

    base = torch.load(bundled_model_path(bundled), weights_only=True)
    cases = dict(_BAD_FIELDS)
    for key, value in _BAD_CONFIG[bundled].items():
        cases[f"config {key}={value!r}"] = lambda p, k=key, v=value: p["config"].update({k: v})
    loader = load_cuts_model if bundled.startswith("cuts") else load_landmark_model
    image = tmp_path / "image.nrrd"
    rng = np.random.default_rng(0)
    write_image(
        Image(rng.random((40, 40)).astype(np.float32), (1.0, 1.0), (0, 0), np.eye(2)), image
    )
    for case, edit in cases.items():
        payload = copy.deepcopy(base)
        edit(payload)
        path = tmp_path / "edited.pt"
        torch.save(payload, path)
        with pytest.raises(ModelFileError, match="damaged or was edited"):
            loader(path)
        if bundled.startswith("cuts"):
            argv = [
                "cuts",
                "segment",
                str(image),
                "--out",
                str(tmp_path / "o"),
                "--model",
                str(path),
            ]
        else:
            argv = ["landmarks", "detect", str(image), "--out", str(tmp_path / "o.mrk.json")]
            argv += ["--model", str(path)]
        assert cli.main(argv) == 2, case
        assert "damaged or was edited" in capsys.readouterr().err, case
