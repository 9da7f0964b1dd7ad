"""Exact resume under SIGKILL: a comparison of every algorithm, killed again and again (mid
sampling, mid optimizer step, mid evaluation, mid checkpoint write, mid CSV row, between
runs) and resumed each time, ends with the CSVs, results and summary of the uninterrupted
comparison (wall-clock columns aside).

Each kill is a real one: a forked child process (sharing the parent's imports, so a kill
costs milliseconds, not an interpreter start) resumes the comparison and sends itself
SIGKILL from a hook on the chosen function, at a chosen point of one algorithm's run, or
right after that run.  On CoinTask a random tiny model is right about half the time and
training moves it, so the compared numbers are not trivially equal."""

from __future__ import annotations

import os
import signal
import traceback
from pathlib import Path

import pandas as pd
import pytest
import torch

from algorithms import ALGORITHM_NAMES, get_algorithm
from trice_rl import runner as runner_module
from trice_rl.budget import Budget
from trice_rl.evaluation import EvalConfig
from trice_rl.plotting import load_runs, summarize
from trice_rl.policy import Policy
from trice_rl.runner import Runner, RunConfig

from .conftest import CoinTask

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked child processes")

RUN = RunConfig(
    budget=Budget(samples=32),
    eval_every=12,
    eval=EvalConfig(max_examples=6, majority_k=2, max_new_tokens=8),
    checkpoint_every=2,
    variance_every=3,
    variance_draws=2,
    variance_batch=4,
    tracked_examples=(0, 1, 2),
)
# Shapes small enough that each run takes a few steps of the 32-sample budget.
SHAPES = {
    "rft": {"particles": 2},
    "grpo": {"group_size": 2},
    "trice-k": {"num_proposals": 2},
    "star": {"initial_inner_steps": 2, "max_inner_steps": 3},
    "rest-em": {"samples_per_example": 2, "max_kept_per_example": 1, "initial_inner_steps": 2, "max_inner_steps": 3},
}
# Each run is killed at these points in turn, each (function, samples): the first call of
# the function once the run has drawn that many samples (0: the step-0 evaluation, before
# the first checkpoint), and finally right after the run has finished.
KILLS = (("evaluate", 0), ("optimizer_step", 6), ("append_line", 12), ("atomic_torch_save", 16), ("sample", 20), ("evaluate", 26), (None, 0))


def run_all(make_policy, out: Path, victim: str | None = None, armed: dict | None = None) -> list[dict]:
    """Every algorithm in turn in one folder, as compare.py runs them, each resumed."""
    results = []
    for name in ALGORITHM_NAMES:
        cls = get_algorithm(name)
        policy = make_policy(tune=cls.default_tune or "full")
        algorithm = cls(policy, CoinTask(), cls.Config(batch_size=4, max_new_tokens=8, lr=1e-2, **SHAPES.get(name, {})), seed=0)
        if armed is not None:
            armed["on"], armed["meter"] = name == victim, policy.meter
        results.append(Runner(algorithm, RUN, out, progress=False).run(resume=True))
        if name == victim:
            die(armed, "between runs")
    return results


def die(armed: dict, where: str) -> None:
    with open(armed["log"], "a") as log:
        log.write(f"{armed['victim']}: {where}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def torn_write(function: str, args: tuple) -> None:
    """Half of what the call would write: a torn checkpoint or CSV line."""
    if function == "atomic_torch_save":
        path = args[1].with_name(args[1].name + ".tmp")
        torch.save(args[0], path)
        os.truncate(path, path.stat().st_size // 2)
    else:
        with open(args[0], "a", newline="") as f:
            f.write(args[1][: len(args[1]) // 2])


def arm(function: str, samples: int, armed: dict) -> None:
    """Replace ``function`` by one that kills the process at its first armed call once
    ``samples`` are drawn: after the call's work (sampling, a step, an evaluation), or
    half-way through its write."""
    owner = Policy if function in ("sample", "optimizer_step") else runner_module
    original = getattr(owner, function)

    def hooked(*args, **kwargs):
        if not (armed["on"] and armed["meter"].samples >= samples):
            return original(*args, **kwargs)
        if function in ("atomic_torch_save", "append_line"):
            torn_write(function, args)
        else:
            original(*args, **kwargs)
        die(armed, function)

    setattr(owner, function, hooked)


def killed_child(make_policy, out: Path, victim: str, function: str | None, samples: int, log: Path) -> None:
    """Resume the comparison in a child process that SIGKILLs itself, and check it did."""
    pid = os.fork()
    if pid == 0:
        try:
            armed = {"on": False, "victim": victim, "log": log}
            if function is not None:
                arm(function, samples, armed)
            run_all(make_policy, out, victim, armed)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(1)  # reached only if no kill came
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{victim}/{function}: exit status {status}"


def without_wall_clock(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in frame.columns if c.startswith("wall_seconds") or c == "eval_seconds"])


def killed_and_resumed(make_policy, tmp_path: Path, kills) -> list[str]:
    """Run the comparison whole, then again under ``kills`` (each algorithm's run killed at
    each in turn) and resumed to the end; check the two give the same rows, summary and
    results, and that they are not trivially equal.  Returns the log of the kills."""
    whole = run_all(make_policy, tmp_path / "whole")
    log = tmp_path / "kills.log"
    for victim in ALGORITHM_NAMES:
        for function, samples in kills:
            killed_child(make_policy, tmp_path / "killed", victim, function, samples, log)
    resumed = run_all(make_policy, tmp_path / "killed")

    runs = {folder: load_runs([tmp_path / folder]).drop(columns="run_folder") for folder in ("whole", "killed")}
    pd.testing.assert_frame_equal(without_wall_clock(runs["whole"]), without_wall_clock(runs["killed"]))
    pd.testing.assert_frame_equal(without_wall_clock(summarize(runs["whole"])), without_wall_clock(summarize(runs["killed"])))
    pd.testing.assert_frame_equal(without_wall_clock(pd.DataFrame(whole)), without_wall_clock(pd.DataFrame(resumed)))
    # Not trivially equal: the models learn, and their accuracies move.
    for column in ("eval_acc_greedy", "eval_acc_sampled", "train_proposal_acc"):
        assert runs["whole"][column].nunique() >= 3, column
    changing = runs["whole"].groupby("algo")["eval_acc_greedy"].nunique()
    assert (changing >= 2).sum() >= len(ALGORITHM_NAMES) - 2, changing
    return log.read_text().splitlines()


def test_a_comparison_killed_anywhere_and_resumed_equals_the_uninterrupted_one(make_tiny_policy, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    kills = killed_and_resumed(make_tiny_policy, tmp_path, KILLS)
    # Every kill came where it was aimed (none found its run already finished).
    assert kills == [f"{victim}: {function or 'between runs'}" for victim in ALGORITHM_NAMES for function, _ in KILLS]


@pytest.mark.slow
def test_kills_every_few_samples_of_every_run_change_nothing(make_tiny_policy, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    functions = ("sample", "optimizer_step", "evaluate", "atomic_torch_save", "append_line")
    kills = [(function, samples) for samples in range(0, 32, 4) for function in functions] + [(None, 0)]
    assert len(killed_and_resumed(make_tiny_policy, tmp_path, kills)) >= len(ALGORITHM_NAMES) * len(functions)


def test_resuming_a_finished_run_changes_nothing(make_tiny_policy, tmp_path, monkeypatch):
    def runner():
        cls = get_algorithm("trice")
        return Runner(cls(make_tiny_policy(), CoinTask(), cls.Config(batch_size=4, max_new_tokens=8, lr=1e-2), seed=0), RUN, tmp_path, progress=False)

    result = runner().run()
    files = {path.name: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    monkeypatch.setattr(runner_module, "evaluate", lambda *a, **k: pytest.fail("a finished run was evaluated again"))
    assert runner().run(resume=True) == result
    assert {path.name: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == files
