"""experiments/benchmark.py's plan (its command line) and experiments/report.py's sentences
that need no benchmark run: fast, unlike tests/test_benchmark.py."""

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
