"""experiments/benchmark.py and experiments/report.py end to end (smoke preset, tiny models):
a process-pool benchmark of minutes, so these run with ``-m slow`` (as .ci/run does)."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.conftest import REPO, load_script

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_benchmark(builtin_cache, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    patch = pytest.MonkeyPatch()
    patch.syspath_prepend(str(REPO / "experiments"))  # spawned workers import the script by name
    benchmark = load_script("benchmark")
    argv = ["--preset", "smoke", "--methods", "trice,grpo", "--workers", "1", "--no-progress", "--out", str(out)]
    benchmark.main(argv)
    yield benchmark, out, argv
    patch.undo()


def test_the_search_picks_the_best_validation_rate_and_every_seed_uses_it(smoke_benchmark):
    benchmark, out, argv = smoke_benchmark
    search = pd.read_csv(out / "lr_search.csv")
    results = pd.read_csv(out / "results.csv")
    for method, rows in search.groupby("method"):
        assert sorted(rows["lr"]) == sorted(benchmark.learning_rates(benchmark.parse_args(argv), method))
        best = rows.sort_values(["val_acc_greedy", "lr"], ascending=[False, True]).iloc[0]
        assert rows[rows["chosen"]]["lr"].tolist() == [best["lr"]]
        chosen = results[results["method"] == method]
        assert sorted(chosen["seed"]) == [0, 1] and set(chosen["lr"]) == {best["lr"]}
        # The search seed's result is the search run itself, not a second run.
        searched = rows[rows["chosen"]].iloc[0]
        assert chosen[chosen["seed"] == 0]["eval_acc_greedy"].item() == pytest.approx(searched["test_acc_greedy"])
    assert (results["samples_drawn"] >= 48).all()


def test_outputs_base_model_hardest_quartile_plots_and_trl(smoke_benchmark):
    _, out, _ = smoke_benchmark
    base = pd.read_csv(out / "base.csv")
    assert base["hardest_quartile_size"].tolist() == [4]  # 16 training examples
    assert base["hardest_quartile_base_acc"].item() <= base["train_acc_sampled"].item()
    for name in ("curves_arithmetic.png", "variance_arithmetic.png", "hardest_arithmetic.png", "summary.csv", "config.json"):
        assert (out / name).exists(), name
    trl = pd.read_csv(out / "trl_grpo.csv")
    results = pd.read_csv(out / "results.csv")
    grpo = results[results["method"] == "grpo"]
    # One TRL run per seed, at our grpo's chosen rate; 2 steps of 4 prompts x 8 generations cover 48.
    assert trl["seed"].tolist() == sorted(grpo["seed"]) == [0, 1] and set(trl["lr"]) == set(grpo["lr"])
    assert trl["samples_drawn"].tolist() == [64, 64]
    assert trl["eval_acc_greedy"].between(0, 1).all() and (trl["trl_s_per_sample"] > 0).all()


def test_a_rerun_skips_finished_runs(smoke_benchmark):
    benchmark, out, argv = smoke_benchmark
    run_csv = next((out / "arithmetic").glob("lr*/trice-seed1.csv"))
    base = out / "arithmetic" / "base.json"
    trl = sorted((out / "arithmetic" / "trl-grpo").glob("lr*-seed*.json"))
    trl_rows = pd.read_csv(out / "trl_grpo.csv")
    files = (run_csv, base, *trl)
    before = [f.stat().st_mtime_ns for f in files]
    results = pd.read_csv(out / "results.csv")
    benchmark.main(argv)
    assert [f.stat().st_mtime_ns for f in files] == before
    assert pd.read_csv(out / "base.csv")["hardest_quartile_size"].tolist() == [4]
    assert len(trl) == 2
    pd.testing.assert_frame_equal(pd.read_csv(out / "trl_grpo.csv"), trl_rows)  # from TRL's cached runs
    # The runs' own times survive the reuse, and the folder's record lists both invocations.
    pd.testing.assert_series_equal(pd.read_csv(out / "results.csv")["wall_seconds"], results["wall_seconds"])
    first, second = json.loads((out / "config.json").read_text())["invocations"][:2]
    assert first["runs_reused"] == 0 and second["runs_reused"] == second["runs"] == first["runs"] > 0
    assert first["trl_runs_reused"] == 0 and second["trl_runs_reused"] == second["trl_runs"] == first["trl_runs"] == 2
    line = load_script("report").commands(json.loads((out / "config.json").read_text()))
    assert line.startswith("Commands, one benchmark resumed in the same folder: ")
    assert f"reusing {first['runs']} of its {first['runs']} runs and 2 of its 2 TRL runs)" in line


def test_the_report_writes_the_results_page(smoke_benchmark, tmp_path):
    _, out, _ = smoke_benchmark
    report = load_script("report")
    docs = tmp_path / "docs"
    report.main([str(out), "--docs", str(docs)])
    text = (docs / "results.md").read_text()
    assert text.startswith("## Results") and report.START not in text
    assert "| arithmetic | trice |" in text and "| arithmetic | base model |" in text
    assert "| arithmetic | TRL GRPOTrainer |" in text and (docs / "curves_arithmetic.png").exists()
    # Every method at equal samples and at equal training FLOPs, the verdicts on both.
    assert "test greedy at equal FLOPs" in text and "at equal FLOPs: difference" in text
    # Arithmetic knows its gold steps: the share of right answers reached by right steps.
    assert "### Right answers from right steps" in text and "| arithmetic | trice | " in text.split("### Right answers from right steps")[1]
    results = pd.read_csv(out / "results.csv")
    assert results["eval_acc_greedy_at_matched_train_flops"].notna().all()
    # TRL against our grpo: both over the two seeds, with the difference's standard error.
    trl = pd.read_csv(out / "trl_grpo.csv")
    ours = results[results["method"] == "grpo"]["eval_acc_greedy"]
    row = next(line for line in text.splitlines() if line.startswith("| arithmetic | ") and line.count("|") == 8)
    assert f"| {report.mean_std(trl['eval_acc_greedy'])} | {report.mean_std(ours)} | {trl['eval_acc_greedy'].mean() - ours.mean():+.3f} ± " in row
    assert "](curves_arithmetic.png)" in text
    # How the runs split their time between training and held-out evaluation.
    share = results["eval_seconds"].sum() / (results["wall_seconds"].sum() + results["eval_seconds"].sum())
    assert results["eval_seconds"].gt(0).all() and f"evaluation is {share:.0%} of their time" in text


def test_verdicts_follow_the_seed_spread():
    report = load_script("report")
    results = pd.DataFrame(
        {
            "setting": ["s"] * 6,
            "method": ["a", "a", "a", "b", "b", "b"],
            "eval_acc_greedy": [0.50, 0.52, 0.54, 0.30, 0.32, 0.34],
        }
    )
    d, se, n = report.difference(results, "s", "a", "b")
    assert d == pytest.approx(0.20) and se == pytest.approx((2 * 0.02**2 / 3) ** 0.5) and n == 3
    assert report.verdict(d, se) == "supported"
    assert report.verdict(-d, se) == "contradicted"
    assert report.verdict(0.01, se) == "not resolved (within noise)"
    assert report.verdict(0.01, se, at_least=True) == "consistent (within noise)"


def test_a_folder_with_other_sizes_is_refused(smoke_benchmark):
    benchmark, out, argv = smoke_benchmark
    with pytest.raises(SystemExit, match="other sizes"):
        benchmark.main([*argv, "--no-trl", "--budget-samples", "64"])


def test_search_runs_share_the_base_evaluation_and_get_their_majority_afterwards(smoke_benchmark):
    benchmark, out, argv = smoke_benchmark
    base = pd.read_csv(out / "base.csv").iloc[0]
    results = pd.read_csv(out / "results.csv")
    for row in results.itertuples():
        run = pd.read_csv(out / "arithmetic" / f"lr{row.lr:g}" / f"{row.method}-seed{row.seed}.csv")
        assert run["eval_acc_greedy"].iloc[0] == pytest.approx(base["eval_acc_greedy"])  # step 0: the base model
        assert pd.notna(row.eval_acc_majority)
    # The majority-of-k evaluated afterwards from a run's final checkpoint is the number its
    # own final evaluation gives: recompute it for a seed whose run evaluated it itself.
    seed1 = results[(results["method"] == "trice") & (results["seed"] == 1)].iloc[0]
    job = benchmark.RunJob("arithmetic", "trice", seed1["lr"], 1, majority=True)
    folder = benchmark.run_folder(benchmark.parse_args(argv), "arithmetic", seed1["lr"])
    result = folder / "trice-seed1.result.json"
    own = json.loads(result.read_text())
    result.write_text(json.dumps({k: v for k, v in own.items() if k not in ("eval_acc_majority", "eval_acc_sampled")}))
    again = benchmark.majority_job(benchmark.parse_args(argv), job)
    assert again["eval_acc_majority"] == pytest.approx(seed1["eval_acc_majority"])
    assert again["eval_acc_sampled"] == pytest.approx(seed1["eval_acc_sampled"])


def test_a_killed_worker_stops_the_benchmark_and_a_rerun_resumes_it(smoke_benchmark, tmp_path):
    """SIGKILL the worker process while it trains: the pool's error stops the benchmark;
    the same command again finishes, with the results of an uninterrupted benchmark."""
    _, reference, _ = smoke_benchmark
    out = tmp_path / "killed"
    command = [sys.executable, str(REPO / "experiments" / "benchmark.py"), "--preset", "smoke", "--methods", "trice", "--no-trl", "--workers", "1", "--no-progress", "--out", str(out)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("arithmetic/lr*/checkpoints/trice-seed0.pt")):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(first.pid)], capture_output=True, text=True).stdout.split()
    for pid in workers:
        os.kill(int(pid), signal.SIGKILL)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode != 0 and "BrokenProcessPool" in stderr
    assert not (out / "results.csv").exists()
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    columns = ["setting", "method", "lr", "seed", "eval_acc_greedy", "eval_acc_majority", "val_acc_greedy", "samples_drawn", "grad_steps", "train_flops"]
    expected = pd.read_csv(reference / "results.csv")
    expected = expected[expected["method"] == "trice"][columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv")[columns], expected)
