"""experiments/compare.py and experiments/plot.py end to end, with the smoke preset."""

import json

import pandas as pd
import pytest

from tests.conftest import load_script
from trice_rl import runner as runner_module


SMOKE = ["--preset", "smoke", "--no-progress", "--set", "max_new_tokens=24"]


def test_smoke_preset_writes_every_output(builtin_cache, tmp_path):
    compare = load_script("compare")
    out = tmp_path / "run"
    compare.main([*SMOKE, "--algos", "trice,cot-sft", "--out", str(out)])
    for name in ("summary.csv", "curves.png", "config.json", "trice-seed0.csv", "cot-sft-seed0.csv"):
        assert (out / name).exists(), name
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["algo"]) == ["cot-sft", "trice"]
    assert summary["eval_acc_greedy_mean"].between(0, 1).all()
    assert summary["eval_acc_majority_mean"].between(0, 1).all()
    config = json.loads((out / "config.json").read_text())
    assert config["budget"]["samples"] == compare.PRESETS["smoke"]["budget_samples"]
    assert config["algorithm_configs"]["trice"]["max_new_tokens"] == 24
    # Identical budgets: both runs stop at the first step boundary at or past the budget.
    used = {row.algo: row.samples_drawn_mean for row in summary.itertuples()}
    assert all(config["budget"]["samples"] <= value < config["budget"]["samples"] + 8 for value in used.values()), used
    redrawn = load_script("plot").main([str(out), "--x", "tokens_generated"])
    assert redrawn.exists()


def test_a_stopped_and_resumed_smoke_run_equals_the_uninterrupted_one(builtin_cache, tmp_path, monkeypatch):
    compare = load_script("compare")
    args = [*SMOKE, "--algos", "rft", "--seeds", "1"]
    compare.main([*args, "--out", str(tmp_path / "whole")])

    original = runner_module.Runner._write_row
    calls = {"n": 0}

    def crash_after_a_few_rows(self, metrics):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        return original(self, metrics)

    monkeypatch.setattr(runner_module.Runner, "_write_row", crash_after_a_few_rows)
    with pytest.raises(KeyboardInterrupt):
        compare.main([*args, "--out", str(tmp_path / "split")])
    monkeypatch.undo()
    resumed = compare.main([*args, "--out", str(tmp_path / "split"), "--resume"])
    whole = pd.read_csv(tmp_path / "whole" / "rft-seed1.csv").drop(columns="wall_seconds")
    split = pd.read_csv(tmp_path / "split" / "rft-seed1.csv").drop(columns="wall_seconds")
    pd.testing.assert_frame_equal(whole, split)
    # Resuming a finished run changes nothing: no second final row, the same result.
    finished = (tmp_path / "split" / "rft-seed1.csv").read_text()
    again = compare.main([*args, "--out", str(tmp_path / "split"), "--resume"])
    assert (tmp_path / "split" / "rft-seed1.csv").read_text() == finished
    assert again["results"] == resumed["results"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--algos", "trice,ppo"], "unknown algorithm ppo; valid: trice, trice-nocv"),
        (["--env", "trice_rl/Chess-v0"], "unknown environment 'trice_rl/Chess-v0'; valid:"),
        (["--budget-samples", "0"], "the samples budget must be positive"),
        (["--model", "./no/such/model"], "does not exist"),
        (["--seeds", "a,b"], "--seeds must be comma-separated integers"),
    ],
)
def test_bad_flags_give_a_one_line_error_naming_what_is_valid(flags, message, capsys):
    compare = load_script("compare")
    with pytest.raises(SystemExit) as exit_info:
        compare.parse_args(flags)
    assert exit_info.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0]
