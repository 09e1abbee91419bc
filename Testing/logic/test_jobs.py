"""LabelFreeLib.jobs: the Qt-free runner both widgets drive from one timer."""

from __future__ import annotations

import sys
import time

import pytest

from labelfree.progress import Progress
from LabelFreeLib.jobs import JobRunner, ProcessJob, StepJob  # noqa: E402 (conftest sets sys.path)
from LabelFreeLib.training import TrainingProcess  # noqa: E402


class FakeClock:
    """Every reading is ``step`` seconds after the previous one."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def counting_steps(count: int, log: list):
    try:
        for index in range(count):
            yield Progress((index + 1) / count, f"step {index + 1}")
        return "result"
    finally:
        log.append("cleaned up")


def test_a_step_job_runs_for_its_budget_per_tick_and_reports_the_last_step():
    log, reports, results = [], [], []
    job = StepJob(
        counting_steps(10, log),
        onProgress=reports.append,
        onDone=results.append,
        budget=0.05,
        clock=FakeClock(0.02),  # each step "takes" 20 ms
    )
    ticks = 0
    while job.tick():
        ticks += 1
    assert 3 <= ticks <= 5  # about 2-3 steps per 50 ms tick, not one tick per step nor all at once
    assert [r.message for r in reports][-1] == "step 10"
    assert results == ["result"] and log == ["cleaned up"]


def test_cancel_closes_the_generator_and_calls_nothing_more():
    log, results = [], []
    job = StepJob(
        counting_steps(100, log),
        onDone=results.append,
        onCancel=lambda: log.append("told"),
        budget=0.0,
    )
    assert job.tick()
    job.cancel()
    assert not job.tick() and not job.running
    assert log == ["cleaned up", "told"] and results == []


def test_an_error_goes_to_on_error_or_propagates():
    def failing():
        yield Progress(0.0, "start")
        raise ValueError("broken input")

    errors = []
    job = StepJob(failing(), onError=errors.append, budget=1.0)
    assert not job.tick()
    assert str(errors[0]) == "broken input"
    with pytest.raises(ValueError, match="broken"):
        StepJob(failing(), budget=1.0).tick()


def test_the_runner_is_not_busy_inside_on_done_and_a_job_may_start_the_next():
    runner = JobRunner()
    seen = []

    def first_done(result):
        seen.append(("first", runner.busy("run")))
        runner.start("run", StepJob(counting_steps(2, []), onDone=lambda r: seen.append("second")))

    runner.start("run", StepJob(counting_steps(3, []), onDone=first_done, budget=0.0))
    runner.start("training", StepJob(counting_steps(1, []), budget=0.0))
    with pytest.raises(RuntimeError, match="running already"):
        runner.start("run", StepJob(counting_steps(1, [])))
    while runner.tick():
        pass
    assert seen == [("first", False), "second"]
    assert not runner.busy()


def _script(tmp_path, body: str):
    path = tmp_path / "child.py"
    path.write_text(body)
    return [sys.executable, "-u", str(path)]


def test_a_process_job_reports_progress_and_its_end(tmp_path):
    command = _script(
        tmp_path,
        "for i in range(3):\n"
        "    print(f'PROGRESS {(i + 1) / 3:.2f} part {i + 1}', flush=True)\n"
        "print('RESULT /tmp/out', flush=True)\n",
    )
    reports, ended = [], []
    runner = JobRunner()
    runner.start("training", ProcessJob(TrainingProcess(command), reports.append, ended.append))
    deadline = time.monotonic() + 60
    while runner.tick() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert reports[-1] == Progress(1.0, "part 3")
    assert ended and ended[0].succeeded and str(ended[0].modelPath) == "/tmp/out"


def test_a_cancelled_process_job_keeps_polling_until_the_process_has_ended(tmp_path):
    command = _script(
        tmp_path, "import time\nprint('PROGRESS 0.1 working', flush=True)\ntime.sleep(60)\n"
    )
    ended = []
    runner = JobRunner()
    runner.start("run", ProcessJob(TrainingProcess(command, grace=1.0), onDone=ended.append))
    deadline = time.monotonic() + 30
    while runner.tick() and not ended and time.monotonic() < deadline:
        if any(line.startswith("PROGRESS") for line in runner._jobs["run"].process.log):
            runner.cancel("run")
            assert runner.busy("run")  # still there until the process group has gone
        time.sleep(0.02)
    assert ended and ended[0].cancelled and not ended[0].succeeded
    assert not runner.busy()
