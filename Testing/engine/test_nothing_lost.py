"""Bad files, full disks and interruptions: inputs are refused before any work, and a
result is complete or absent, never half written (issue 12, items 2-4, 6, 7, 10)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import oblique_volume, random_model_file

from labelfree import cli
from labelfree.errors import InputError, OutputError
from labelfree.io import Image, read_image, write_image, write_text


@pytest.fixture(scope="module")
def grey_model(tmp_path_factory):
    return random_model_file(tmp_path_factory.mktemp("m") / "grey.pt")


def small_volume(seed=0):
    rng = np.random.default_rng(seed)
    return Image(rng.random((20, 40, 40)).astype(np.float32), (1.0, 1.0, 2.0), (0, 0, 0), np.eye(3))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (hidden ones too) with its SHA-256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def segment(source, out, model, *extra):
    args = ["segment", source, "--out", out, "--model", model, "--device", "cpu", "--quiet"]
    return cli.main(["cuts", *map(str, args), *map(str, extra)])


# -- inputs refused before ITK allocates or reads garbage ------------------------------------


@pytest.mark.parametrize("suffix", ["nii", "nii.gz", "nrrd", "mha"])
def test_a_truncated_file_is_refused(tmp_path, grey_model, capsys, suffix):
    whole = write_image(small_volume(), tmp_path / f"whole.{suffix}")
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated|damaged"):
        read_image(cut)
    assert segment(cut, tmp_path / "out", grey_model) == 2
    err = capsys.readouterr().err
    assert "truncated" in err or "damaged" in err
    assert "use NRRD" not in err  # the file is of a supported kind, only broken
    assert not (tmp_path / "out").exists()


def test_a_header_that_declares_gigabytes_is_refused_without_allocating(tmp_path):
    bomb = tmp_path / "bomb.nrrd"
    bomb.write_bytes(
        b"NRRD0004\ntype: float\ndimension: 3\nsizes: 1024 1024 1024\n"
        b"endian: little\nencoding: gzip\n\n\x1f\x8b garbage"
    )
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("peak memory is read from /proc/self/status (Linux)")
    probe = (
        "from pathlib import Path\n"
        "from labelfree.io import read_image\n"
        "from labelfree.errors import InputError\n"
        "try:\n"
        f"    read_image({str(bomb)!r})\n"
        "except InputError as err:\n"
        "    print(err)\n"
        "peak = [l for l in Path('/proc/self/status').read_text().splitlines() if 'VmHWM' in l]\n"
        "print(int(peak[0].split()[1]) // 1024)\n"  # this process's peak resident memory, MiB
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    message, peak_mib = done.stdout.strip().splitlines()
    assert "1024 x 1024 x 1024" in message and "truncated or damaged" in message
    assert "use NRRD" not in message
    assert int(peak_mib) < 1024  # the 4 GiB buffer was never allocated


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_is_refused_instead_of_blocking(tmp_path):
    fifo = tmp_path / "scan.nrrd"
    os.mkfifo(fifo)
    probe = f"from labelfree import cli; raise SystemExit(cli.main(['cuts', 'segment', {str(fifo)!r}, '--out', {str(tmp_path / 'o')!r}]))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "not a regular file" in done.stderr


def test_a_non_orthogonal_direction_is_refused_for_nifti_and_kept_by_nrrd(
    tmp_path, grey_model, capsys
):
    volume = oblique_volume()
    sheared = volume.direction @ np.array([[1, 0.15, 0], [0, 1, 0], [0, 0, 1]])
    volume.direction = sheared / np.linalg.norm(sheared, axis=0)  # unit axes, not orthogonal
    source = write_image(volume, tmp_path / "sheared.nrrd")
    out = tmp_path / "out"
    assert segment(source, out, grey_model, "--format", "nii.gz", "--max-levels", 2) == 2
    assert "not orthogonal" in capsys.readouterr().err and not out.exists()
    with pytest.raises(InputError, match="NRRD or MHA"):
        write_image(volume, tmp_path / "labels.nii.gz")
    assert segment(source, out, grey_model, "--max-levels", 2) == 0
    back = read_image(out / "level_00.nrrd")
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)


# -- writes that fail are reported, and replace nothing ---------------------------------------


def test_a_writer_that_truncates_but_reports_success_replaces_nothing(tmp_path, monkeypatch):
    """ITK's NIfTI-gz writer on a full disk returns normally with a truncated file."""
    target = write_image(small_volume(0), tmp_path / "b.nii.gz")
    before = target.read_bytes()
    real_write = sitk.WriteImage

    def truncating_write(image, path, *args, **kwargs):
        real_write(image, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(sitk, "WriteImage", truncating_write)
    with pytest.raises(OutputError, match="disk full"):
        write_image(small_volume(1), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.nii.gz"]


@pytest.mark.parametrize("name", ["b.nii.gz", "b.nii", "b.nrrd", "b.mha"])
def test_a_full_disk_gives_an_error_and_no_file(small_disk, name):
    volume = small_volume()  # 128 KiB of float32 noise: no format makes it fit twice
    (small_disk / "filler").write_bytes(b"\0" * 160 * 1024)
    with pytest.raises(OutputError, match="disk"):
        write_image(volume, small_disk / name)
    with pytest.raises(OutputError, match="space"):
        write_text(small_disk / "notes.txt", "x" * 200_000)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_a_read_only_folder_is_refused_before_any_work(small_disk, tmp_path, grey_model, capsys):
    source = write_image(small_volume(), tmp_path / "in.nrrd")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert segment(source, small_disk / "out", grey_model) == 2
    err = capsys.readouterr().err
    assert "Cannot write" in err and "Traceback" not in err


# -- a result folder holds one complete run ---------------------------------------------------


def test_ctrl_c_while_writing_levels_keeps_the_previous_result(tmp_path, grey_model, monkeypatch):
    from labelfree.cuts import folders

    source = write_image(oblique_volume(), tmp_path / "in.nrrd")
    out = tmp_path / "out"
    assert segment(source, out, grey_model, "--max-levels", 4) == 0
    before = snapshot(tmp_path)
    real_write = folders._write_labels
    calls = []

    def interrupted(image, labels, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_write(image, labels, path)

    monkeypatch.setattr(folders, "_write_labels", interrupted)
    assert segment(source, out, grey_model, "--max-levels", 4, "--seed", 9) == 130
    assert len(calls) == 3
    assert snapshot(tmp_path) == before  # no file replaced, deleted or left behind


def test_a_killed_run_leaves_nothing_that_outlives_the_next_run(tmp_path, grey_model):
    source = write_image(oblique_volume(), tmp_path / "in.nrrd")
    out = tmp_path / "out"
    killed = tmp_path / ".out.new-deadbeef"  # what SIGKILL during writing leaves
    killed.mkdir()
    (killed / "level_00.nrrd").write_text("half")
    assert segment(source, out, grey_model, "--max-levels", 2) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "in.nrrd", "out"]
    assert json.loads((out / "summary.json").read_text())["levels"]


def test_a_swap_cut_short_is_completed_by_the_next_run(tmp_path, grey_model):
    source = write_image(oblique_volume(), tmp_path / "in.nrrd")
    out = tmp_path / "out"
    assert segment(source, out, grey_model, "--max-levels", 2) == 0
    done = out.rename(tmp_path / ".out.new-0badcafe")  # killed between the two renames
    lock = tmp_path / ".out.lock"
    lock.touch()  # a lock file of a killed run holds no lock
    assert segment(source, out, grey_model, "--max-levels", 2) == 0
    assert not done.exists() and (out / "summary.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "in.nrrd", "out"]


def test_a_new_method_leaves_no_file_of_the_previous_one(tmp_path, grey_model):
    source = write_image(oblique_volume(), tmp_path / "in.nrrd")
    out = tmp_path / "out"
    assert segment(source, out, grey_model, "--method", "kmeans", "--k", 3) == 0
    assert (out / "kmeans.nrrd").exists()
    assert segment(source, out, grey_model, "--max-levels", 2) == 0
    summary = json.loads((out / "summary.json").read_text())
    expected = {level["file"] for level in summary["levels"]} | {
        "persistent.nrrd",
        "summary.json",
        "provenance.json",
    }
    assert {p.name for p in out.iterdir()} == expected


@pytest.mark.skipif(sys.platform == "win32", reason="the lock is taken with fcntl here")
def test_a_second_run_into_the_same_folder_is_refused(tmp_path, grey_model, capsys):
    import fcntl

    source = write_image(oblique_volume(), tmp_path / "in.nrrd")
    out = tmp_path / "out"
    with (tmp_path / ".out.lock").open("a+b") as held:  # as a running segmentation holds it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert segment(source, out, grey_model) == 2
    assert "Another run is writing into" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_with_other_files_is_not_replaced(tmp_path, grey_model, capsys):
    source = write_image(oblique_volume(), tmp_path / "in.nrrd")
    desktop = tmp_path / "Desktop"
    desktop.mkdir()
    (desktop / "thesis.docx").write_text("years of work")
    assert segment(source, desktop, grey_model) == 2
    assert "not a LabelFree result" in capsys.readouterr().err
    assert (desktop / "thesis.docx").read_text() == "years of work"
    below_file = tmp_path / "in.nrrd" / "out"
    assert segment(source, below_file, grey_model) == 2
    assert "below the file" in capsys.readouterr().err


def test_every_result_folder_records_its_provenance(tmp_path, grey_model):
    source = write_image(oblique_volume(), tmp_path / "in.nrrd")
    out = tmp_path / "out"
    assert segment(source, out, grey_model, "--max-levels", 2, "--seed", 4) == 0
    record = json.loads((out / "provenance.json").read_text())
    assert record["inputs"][0]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert record["run"]["seed"] == 4 and record["run"]["model"]["trained_on"] == "random (tests)"
    assert record["versions"]["torch"] and record["versions"]["SimpleITK"]


# -- found in review: reruns, user files, odd names, damaged headers and summaries ------------


def test_a_finished_result_folder_with_the_users_own_files_is_not_replaced(tmp_path, grey_model):
    source = write_image(oblique_volume(), tmp_path / "in.nrrd")
    out = tmp_path / "out"
    assert segment(source, out, grey_model, "--max-levels", 2) == 0
    (out / "my_edits.seg.nrrd").write_text("an afternoon of editing")
    assert segment(source, out, grey_model, "--max-levels", 2) == 2
    assert (out / "my_edits.seg.nrrd").read_text() == "an afternoon of editing"


def test_a_case_name_with_glob_characters_touches_no_other_case(tmp_path, grey_model):
    source = write_image(oblique_volume(), tmp_path / "in.nrrd")
    other = tmp_path / ".case1.new-12345678"  # another case's staging folder, in use
    other.mkdir()
    (other / "summary.json").write_text("{}")
    assert segment(source, tmp_path / "case[1]", grey_model, "--max-levels", 2) == 0
    assert other.is_dir() and not (tmp_path / "case1").exists()


def test_a_nifti_header_with_a_nan_offset_is_refused(tmp_path):
    path = write_image(small_volume(), tmp_path / "v.nii")
    data = bytearray(path.read_bytes())
    data[108:112] = np.array([np.nan], "<f4").tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="damaged"):
        read_image(path)


def test_a_summary_of_another_shape_is_refused(tmp_path, grey_model):
    from labelfree.cuts.folders import read_result_folder

    source = write_image(oblique_volume(), tmp_path / "in.nrrd")
    out = tmp_path / "out"
    assert segment(source, out, grey_model, "--max-levels", 2) == 0
    for broken in ({"levels": "none"}, {"levels": [{"file": "../../etc/passwd", "clusters": 2}]}):
        summary = json.loads((out / "summary.json").read_text())
        (out / "summary.json").write_text(json.dumps({**summary, **broken}))
        with pytest.raises(InputError, match="summary|label maps"):
            read_result_folder(out)
