"""The headless training helper (Resources/Scripts/labelfree_train.py) run as a child process.

It is started the way the modules start it (LabelFreeLib.training.TrainingProcess), with
plain ``python`` here; inside Slicer the same command runs under PythonSlicer.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from labelfree.io import Image, lps_to_ras, write_image
from labelfree.modelfile import load_model
from labelfree.progress import Progress
from LabelFreeLib.training import (  # noqa: E402 (conftest sets sys.path)
    TrainingProcess,
    parseProgressLine,
    trainingCommand,
    trainingScriptPath,
)

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240


def _writePhantoms(folder: Path, count: int = 3) -> list[Path]:
    """Shifted, slightly scaled Shepp-Logan phantoms, 48x48, as NRRD files."""
    from scipy import ndimage
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    base = resize(shepp_logan_phantom(), (48, 48), anti_aliasing=True).astype(np.float32)
    paths = []
    for index in range(count):
        moved = ndimage.shift(base, (index - 1, 2 * index - 2), order=1)
        image = Image(moved, (1.0, 1.0), (0.0, 0.0), np.eye(2))
        paths.append(write_image(image, folder / f"phantom{index}.nrrd"))
    return paths


def _run(command) -> TrainingProcess:
    process = TrainingProcess(command)
    reports: list[Progress] = []
    deadline = time.monotonic() + TIMEOUT
    while process.running and time.monotonic() < deadline:
        reports += process.poll()
        time.sleep(0.05)
    process.wait(timeout=10)
    process.reports = reports + process.poll()
    return process


def test_progress_lines_parse():
    assert parseProgressLine("PROGRESS 0.25 epoch 1/4") == Progress(0.25, "epoch 1/4")
    assert parseProgressLine("PROGRESS 1.5") == Progress(1.0, "")
    assert parseProgressLine("PROGRESS x y") is None
    assert parseProgressLine("loss 0.3") is None


def test_command_line_is_built_from_options(tmp_path):
    command = trainingCommand(
        "cuts", [tmp_path / "a.nrrd"], tmp_path / "m.pt", epochs=3, init_model=None
    )
    assert command[:3] == [sys.executable, "-u", str(trainingScriptPath())]
    assert command[3:] == [
        "cuts",
        str(tmp_path / "a.nrrd"),
        "--out",
        str(tmp_path / "m.pt"),
        "--epochs",
        "3",
    ]
    assert trainingScriptPath() == ROOT / "Resources" / "Scripts" / "labelfree_train.py"
    with pytest.raises(ValueError, match="task"):
        trainingCommand("unet", [], "m.pt")


def test_trains_a_tiny_landmark_model(tmp_path):
    inputs = _writePhantoms(tmp_path)
    out = tmp_path / "models" / "landmarks.pt"
    command = trainingCommand(
        "landmarks",
        inputs,
        out,
        landmarks=4,
        epochs=1,
        input_size=64,
        device="cpu",
        equivariance=5,
    )
    process = _run(command)
    assert process.returnCode == 0, "\n".join(process.log)
    assert process.succeeded and process.modelPath == out
    assert len(process.reports) >= 3
    assert process.reports[-1].fraction == 1.0
    model = load_model(out, kind="landmarks")
    card = json.loads(out.with_name("landmarks.card.json").read_text())
    assert card["landmarks"] == 4 == model.card["landmarks"]
    assert card["training"]["equivariance"] == 5.0


def test_adapts_a_cuts_model_to_a_volume_and_uses_it(tmp_path, scene, obliqueVolumeNode, ijkToRas):
    """'Adapt model to this volume' without the GUI: write, train in a child process, segment."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("labelfree.cuts.train")
    from CUTSSegmentLib import CUTSSegmentLogic

    from labelfree.cuts.model import CutsModel, model_config, save_cuts_model
    from labelfree.io import read_image

    torch.manual_seed(0)
    start = CutsModel(1)  # default width: cuts.train fine-tunes into a 128-d model
    startPath = save_cuts_model(tmp_path / "start.pt", start, model_config(start), {})
    logic = CUTSSegmentLogic(scene)
    out = tmp_path / "adapted" / "cuts.pt"
    command = logic.adaptationCommand(
        obliqueVolumeNode, tmp_path, out, initModel=startPath, epochs=1, device="cpu"
    )
    written = read_image(tmp_path / "adapt_input.nrrd")
    assert written.array.shape == (6, 32, 40)
    ras = lps_to_ras(written.index_to_physical(np.array([[1.0, 2.0, 3.0]]))[0])
    np.testing.assert_allclose(ras, (ijkToRas(obliqueVolumeNode) @ [1, 2, 3, 1])[:3], atol=1e-4)
    assert command[command.index("--init-model") + 1] == str(startPath)

    process = _run(command)
    assert process.returnCode == 0, "\n".join(process.log)
    assert process.modelPath == out and out.with_name("cuts.card.json").is_file()
    assert load_model(out, kind="cuts").card
    result = logic.segment(obliqueVolumeNode, out, maxLevels=4, poolSize=2048, device="cpu")
    assert result.levelCount >= 1


def test_bad_input_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "never.pt"
    process = _run(trainingCommand("landmarks", [tmp_path / "missing.nrrd"], out, landmarks=4))
    assert process.returnCode == 2
    assert "not found" in process.errorMessage
    assert not out.exists() and not process.succeeded


def _startedTraining(tmp_path, out, launcher=None, grace=5.0) -> TrainingProcess:
    inputs = _writePhantoms(tmp_path)
    command = trainingCommand(
        "landmarks", inputs, out, landmarks=4, epochs=500, input_size=64, device="cpu"
    )
    process = TrainingProcess((launcher or []) + command, grace=grace)
    deadline = time.monotonic() + TIMEOUT
    started = False
    while not started and process.running and time.monotonic() < deadline:
        started = any(r.fraction > 0 for r in process.poll())
        time.sleep(0.05)
    assert started, "\n".join(process.log)
    return process


def test_cancel_stops_training_and_writes_nothing(tmp_path):
    out = tmp_path / "cancelled.pt"
    process = _startedTraining(tmp_path, out)
    process.cancel()  # returns at once; polling sees the end
    assert process.wait(timeout=60) == 130, "\n".join(process.log)
    assert process.cancelled and not process.succeeded
    assert not out.exists()
    assert not list(tmp_path.glob(".cancelled.pt*"))


# Like PythonSlicer (a CTK launcher): runs Python as a child, ignores SIGTERM, forwards nothing.
_LAUNCHER = """
import signal, subprocess, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(sys.argv[1:])
print("CHILD", child.pid, flush=True)
sys.exit(child.wait())
"""


@pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX here")
def test_cancel_ends_the_trainer_under_a_launcher_that_ignores_signals(tmp_path):
    import os

    launcher = tmp_path / "launcher.py"
    launcher.write_text(_LAUNCHER)
    out = tmp_path / "launched.pt"
    process = _startedTraining(tmp_path, out, launcher=[sys.executable, str(launcher)], grace=2.0)
    childPid = int(next(line.split()[1] for line in process.log if line.startswith("CHILD ")))
    process.cancel()
    process.wait(timeout=60)
    assert not process.running and not process.succeeded
    with pytest.raises(ProcessLookupError):
        os.kill(childPid, 0)  # the trainer, the launcher's child, is gone too
    time.sleep(0.5)
    assert not out.exists() and not list(tmp_path.glob("*.pt"))


def test_undecodable_output_is_kept_readable(tmp_path):
    code = "import sys; sys.stdout.buffer.write(b'bad \\xff\\xfe bytes\\nRESULT m.pt\\n')"
    process = TrainingProcess([sys.executable, "-c", code])
    assert process.wait(timeout=30) == 0
    assert process.log[0] == "bad \ufffd\ufffd bytes"
    assert process.succeeded and process.modelPath == Path("m.pt")
