"""How long the modules hold Slicer's main thread, on a 1 mm brain (issue: long steps freeze the GUI).

The widgets run long work two ways, both measured here on nilearn's 1 mm MNI152 T1
(197 x 233 x 189) in a real MRML scene (slicer-core), through the modules' own logic:

- CUTSSegment: Apply writes the volume for a child process (main thread), the child
  segments (off the main thread; the widget polls it), and the result is loaded one
  label file per timer tick (main thread); the slider then switches levels.
- LandmarkDiscovery: Apply runs ``detectSteps`` on the main thread, one step per tick;
  the batch runs in a child process.

For each piece it prints the longest time the main thread is held by one call (the
widget's timer tick), against the 200 ms aim. The child process's wall time is printed
for scale; it does not hold the main thread.

Usage: python bench/gui_steps.py   (about 1-2 minutes on 2 CPU cores)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from _common import OUT, fmt_table, load_mni, machine

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "CUTSSegment", ROOT / "LandmarkDiscovery"):
    sys.path.insert(0, str(folder))

AIM_MS = 200.0


def longest_step_ms(steps) -> tuple[float, str, object]:
    """Run a step generator; the longest single ``next()`` (ms), its message, and the result."""
    longest, label = 0.0, ""
    while True:
        start = time.perf_counter()
        try:
            report = next(steps)
        except StopIteration as done:
            elapsed = 1000 * (time.perf_counter() - start)
            if elapsed > longest:
                longest, label = elapsed, "(final step)"
            return longest, label, done.value
        elapsed = 1000 * (time.perf_counter() - start)
        if elapsed > longest:
            longest, label = elapsed, report.message


def timed_ms(call) -> tuple[float, object]:
    start = time.perf_counter()
    value = call()
    return 1000 * (time.perf_counter() - start), value


def main() -> int:
    from CUTSSegmentLib import CUTSSegmentLogic
    from LandmarkDiscoveryLib import LandmarkDiscoveryLogic

    from LabelFreeLib.headless import addVolumeNode, newScene
    from LabelFreeLib.training import TrainingProcess

    t1, _, _ = load_mni()
    scene, logics = newScene()
    volume = addVolumeNode(scene, t1, "MNI152 T1 1 mm")
    rows, record = [], {"machine": machine(), "shape": list(t1.array.shape), "aim_ms": AIM_MS}

    with tempfile.TemporaryDirectory() as work:
        cuts = CUTSSegmentLogic(scene)
        first_ms, _ = timed_ms(lambda: cuts.segmentationCommand(volume, work, device="cpu"))
        write_ms, command = timed_ms(
            lambda: cuts.segmentationCommand(volume, work, device="cpu", seed=0)
        )
        rows.append(["CUTS first Apply: import torch, check the model", f"{first_ms:.0f}", ""])
        rows.append(["CUTS Apply: check, write the volume for the child", f"{write_ms:.0f}", ""])
        process = TrainingProcess(command)
        poll_ms, start = 0.0, time.perf_counter()
        while process.running:
            tick = time.perf_counter()
            process.poll()
            poll_ms = max(poll_ms, 1000 * (time.perf_counter() - tick))
            time.sleep(0.1)
        child_s = time.perf_counter() - start
        if not process.succeeded:
            print("\n".join(process.log[-20:]))
            return 1
        rows.append(["CUTS: one poll of the child (its run: off the thread)", f"{poll_ms:.1f}", ""])
        load_ms, label, result = longest_step_ms(
            cuts.loadSegmentationSteps(volume, process.modelPath)
        )
        rows.append(["CUTS: load the result, longest step", f"{load_ms:.0f}", label])
        slider = [timed_ms(lambda i=i: cuts.setLevel(i))[0] for i in range(result.levelCount)]
        rows.append(["CUTS slider: one level switch (worst)", f"{max(slider):.1f}", ""])
        record["cuts_child_seconds"] = round(child_s, 1)
        record["cuts_engine_seconds"] = result.seconds

        landmarks = LandmarkDiscoveryLogic(scene)
        first_ms, _ = timed_ms(lambda: landmarks.detect(volume))  # loads the bundled model
        detect_ms, label, _node = longest_step_ms(landmarks.detectSteps(volume))
        rows.append(["Landmarks first Apply, whole (loads the model)", f"{first_ms:.0f}", ""])
        rows.append(["Landmarks Apply: longest step", f"{detect_ms:.0f}", label])

    for row in rows:
        row.append("yes" if float(row[1]) <= AIM_MS else "no")
    record["rows"] = [dict(zip(("what", "ms", "step", "within_aim"), r, strict=True)) for r in rows]
    print(record["machine"])
    engine = record["cuts_engine_seconds"].get("total", 0.0)
    print(
        f"CUTS child process (off the main thread): {child_s:.1f} s, of which segmenting {engine:.1f} s"
    )
    print(fmt_table(rows, ["main thread held by", "ms", "longest step", f"<= {AIM_MS:.0f} ms"]))
    OUT.mkdir(exist_ok=True)
    (OUT / "gui_steps.json").write_text(json.dumps(record, indent=2))
    del logics
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
