"""experiments/benchmark.py's plan (its command line) and experiments/report.py's sentences
that need no benchmark run: fast, unlike tests/test_benchmark.py."""

import dataclasses
import json

import pandas as pd
import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def benchmark():
    return load_script("benchmark")


def test_the_paper_preset_searches_a_lower_grid_than_the_quick_one(benchmark):
    assert benchmark.learning_rates(benchmark.parse_args(["--preset", "paper"]), "trice") == (1e-5, 3e-5, 1e-4)
    assert benchmark.learning_rates(benchmark.parse_args([]), "trice") == (3e-5, 1e-4, 3e-4)
    # prompt tuning keeps its own grid
    assert benchmark.learning_rates(benchmark.parse_args(["--preset", "paper"]), "prompt-tuning") == (0.1, 0.3, 1.0)


def test_lrs_replaces_the_full_tuning_grid(benchmark):
    plan = benchmark.parse_args(["--preset", "paper", "--lrs", "3e-5,1e-5,3e-5"])
    assert benchmark.learning_rates(plan, "rft") == (1e-5, 3e-5)
    assert benchmark.learning_rates(plan, "prompt-tuning") == (0.1, 0.3, 1.0)


@pytest.mark.parametrize("bad", ["fast", "1e-5,,3e-5", "0", "-1e-5", "inf"])
def test_lrs_that_are_not_positive_numbers_are_refused(benchmark, bad, capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--lrs", bad])
    assert "--lrs" in capsys.readouterr().err


def test_the_report_says_whether_rates_were_searched_or_fixed():
    report = load_script("report")
    note = report.rates_note({"seeds": [0, 1], "learning_rates": {"full": [1e-5], "prompt": [0.1, 0.3, 1.0]}})
    assert "full: fixed at 1e-05" in note and "prompt: searched over 0.1, 0.3, 1 on seed 0" in note


def test_set_overrides_a_field_of_every_selected_method_that_has_it(benchmark):
    plan = benchmark.parse_args(["--methods", "trice,rft", "--set", "memory_max_reuse=2"])
    assert plan.method_shapes["trice"] == {"batch_size": 32, "memory_max_reuse": 2}
    assert plan.method_shapes["rft"] == benchmark.METHOD_SHAPES["rft"]


@pytest.mark.parametrize(
    "assignment,message",
    [
        ("memory_max_reuse", "expects FIELD=VALUE"),
        ("no_such_field=1", "no_such_field: no selected method has such a config field"),
        ("memory_max_reuse=soon", "memory_max_reuse takes an integer or null"),
        ("memory_max_reuse=-1", "memory_max_reuse must be a non-negative int"),
        ("memory_max_reuse=0", "memory_max_reuse=0 with the control variate"),
        ("lr=1e-3", "the benchmark sets these itself"),
    ],
)
def test_bad_set_values_are_refused_with_the_field_named(benchmark, assignment, message, capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--methods", "trice", "--set", assignment])
    assert message in capsys.readouterr().err


def test_a_folder_with_runs_of_other_settings_is_refused(benchmark, tmp_path):
    """Finished runs are reused by name: a folder whose TRICE ran without the override
    must not pass them off as runs with it."""
    plan = benchmark.parse_args(["--preset", "smoke", "--methods", "trice"])
    sizes = json.loads(json.dumps(dataclasses.asdict(plan.sizes)))
    (tmp_path / "config.json").write_text(json.dumps({"preset": sizes, "method_shapes": {"trice": {"batch_size": 32}}}))
    with pytest.raises(SystemExit, match="holds trice runs with other settings"):
        benchmark.main(["--preset", "smoke", "--methods", "trice", "--set", "memory_max_reuse=2", "--out", str(tmp_path)])


def test_the_half_samples_bar_reads_each_seed_s_curve(tmp_path):
    """TRICE seed 0 reaches rft's final mean (0.25) at 400 samples of 1,000 (half: 500),
    seed 1 only at 800: the bar is not met; with seed 1 faster it is."""
    report = load_script("report")
    folder = tmp_path / "s" / "lr0.0001"
    folder.mkdir(parents=True)
    curves = {0: [0.1, 0.2, 0.26, 0.3], 1: [0.1, 0.2, 0.2, 0.25]}
    for seed, accuracy in curves.items():
        pd.DataFrame({"samples_drawn": [0, 200, 400, 800], "eval_acc_greedy": accuracy}).to_csv(folder / f"trice-seed{seed}.csv", index=False)
    results = pd.DataFrame(
        {"setting": "s", "method": ["trice", "trice", "rft", "rft"], "seed": [0, 1, 0, 1], "lr": 1e-4, "eval_acc_greedy": [0.3, 0.25, 0.2, 0.3], "samples_drawn": 1000}
    )
    [line] = report.half_samples_bar(results, tmp_path, "s")
    assert "per seed: 400, 800 | not met" in line and "(0.250)" in line
    curves[1][2] = 0.25
    pd.DataFrame({"samples_drawn": [0, 200, 400, 800], "eval_acc_greedy": curves[1]}).to_csv(folder / "trice-seed1.csv", index=False)
    assert "per seed: 400, 400 | met" in report.half_samples_bar(results, tmp_path, "s")[0]


def test_a_difference_over_one_seed_is_not_judged_and_own_training_sizes_are_named():
    report = load_script("report")
    results = pd.DataFrame({"setting": "s", "method": ["a", "b"], "eval_acc_greedy": [0.9, 0.8]})
    d, se, n = report.difference(results, "s", "a", "b")
    assert d == pytest.approx(0.1) and n == 1 and report.verdict(d, se) == "not judged (one seed)"
    config = {"settings": {"arithmetic": {"num_train": None}, "arithmetic-large": {"num_train": 2000}}}
    assert report.own_sizes(config) == " (arithmetic-large: 2,000)"
