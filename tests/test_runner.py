"""The shared loop: identical budgets, evaluation, CSV logging, exact resume; compare.py."""

import csv

import numpy as np
import pandas as pd
import pytest

from algorithms import ALGORITHM_NAMES, get_algorithm
from trice_rl.budget import Budget
from trice_rl.evaluation import EvalConfig, evaluate, majority_vote
from trice_rl.runner import BASE_COLUMNS, Runner, RunConfig

from .conftest import CoinTask


def run_config(samples: int, **kwargs) -> RunConfig:
    return RunConfig(budget=Budget(samples=samples), eval_every=24, eval=EvalConfig(max_examples=6, majority_k=2, max_new_tokens=8), **kwargs)


def small_config(name: str):
    cls = get_algorithm(name)
    return cls.Config(batch_size=4, max_new_tokens=8, lr=1e-2)


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", ["trice", "trice-nocv", "rft", "grpo", "star"])
def test_a_run_stops_at_the_budget_and_logs_every_column(name, make_tiny_policy, tmp_path):
    policy = make_tiny_policy()
    algorithm = get_algorithm(name)(policy, CoinTask(), small_config(name), seed=0)
    result = Runner(algorithm, run_config(48), tmp_path, progress=False).run()
    rows = read_rows(tmp_path / f"{name}-seed0.csv")
    assert set(BASE_COLUMNS) <= set(rows[0])
    assert rows[0]["eval_acc_greedy"] != ""  # the base model is evaluated before training
    assert rows[-1]["eval_acc_majority"] != ""  # majority-of-k at the end
    # No overshoot: the last step shrinks to fit, and stops short of the budget only by less
    # than one example's samples (STaR budgets two per example: a sample and its
    # rationalization); the final evaluation row repeats the last step's usage.
    one_example = {"rft": 4, "grpo": algorithm.samples_per_example(), "star": 2}.get(name, 1)
    assert 48 - one_example < result["samples_drawn"] <= 48
    samples = [int(r["samples_drawn"]) for r in rows]
    assert samples[-2] == samples[-1] == result["samples_drawn"]


def test_identical_budgets_across_algorithms(make_tiny_policy, tmp_path):
    used = {}
    for name in ("trice", "rft", "grpo"):
        algorithm = get_algorithm(name)(make_tiny_policy(), CoinTask(), small_config(name), seed=0)
        used[name] = Runner(algorithm, run_config(64), tmp_path / name, progress=False).run()["samples_drawn"]
    # Every run draws exactly the budget: the last step shrinks to fit (64 is a multiple of
    # rft's 4 and grpo's 8 samples per example; TRICE's setup draws one per example).
    assert used == {"trice": 64, "rft": 64, "grpo": 64}, used


@pytest.mark.parametrize("name", ["trice", "rft"])
def test_a_stopped_and_resumed_run_equals_the_uninterrupted_one(name, make_tiny_policy, tmp_path, monkeypatch):
    def fresh():
        return get_algorithm(name)(make_tiny_policy(seed=3), CoinTask(), small_config(name), seed=3)

    Runner(fresh(), run_config(96, checkpoint_every=2), tmp_path / "whole", progress=False).run()

    interrupted = fresh()
    original_step = type(interrupted).step
    calls = {"n": 0}

    def crashing_step(self):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original_step(self)

    monkeypatch.setattr(type(interrupted), "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        Runner(interrupted, run_config(96, checkpoint_every=2), tmp_path / "split", progress=False).run()
    monkeypatch.undo()
    Runner(fresh(), run_config(96, checkpoint_every=2), tmp_path / "split", progress=False).run(resume=True)

    whole = pd.read_csv(tmp_path / "whole" / f"{name}-seed3.csv").drop(columns="wall_seconds")
    split = pd.read_csv(tmp_path / "split" / f"{name}-seed3.csv").drop(columns="wall_seconds")
    pd.testing.assert_frame_equal(whole, split)


def test_trice_never_puts_an_incorrect_proposal_in_memory_and_never_scores_with_the_hint(make_tiny_policy, tmp_path):
    task = CoinTask()
    policy = make_tiny_policy()
    algorithm = get_algorithm("trice")(policy, task, small_config("trice"), seed=0)
    scored_prompts = []
    original = policy.logprob

    def spy(prompts, completions, batch_size=None):
        scored_prompts.extend(prompts)
        return original(prompts, completions, batch_size)

    policy.logprob = spy
    algorithm.setup()
    for _ in range(6):
        before = algorithm.memory_tokens.clone(), algorithm.memory_correct.clone()
        algorithm.step()
        for i in range(len(algorithm.train)):
            ids = algorithm.memory_tokens[i, : algorithm.memory_lengths[i]].tolist()
            text = policy.tokenizer.decode(ids, skip_special_tokens=True)
            changed = not bool((algorithm.memory_tokens[i] == before[0][i]).all())
            if changed:  # only a correct proposal may replace an entry
                assert task.score([text], ["even"])[0] == 1.0
            assert bool(algorithm.memory_correct[i]) == (task.score([text], ["even"])[0] == 1.0)
        assert bool((algorithm.memory_correct >= before[1]).all())  # correct entries stay correct
    assert scored_prompts and not any("The answer is" in p for p in scored_prompts)


def test_majority_vote_ignores_unanswered_samples_and_breaks_ties_by_first_seen():
    assert majority_vote([None, "3", "4", "4", None]) == "4"
    assert majority_vote(["5", "3", "3", "5"]) == "5"
    assert majority_vote([None, None]) is None


def test_every_algorithm_name_resolves():
    for name in ALGORITHM_NAMES:
        cls = get_algorithm(name)
        assert cls.name == name
    with pytest.raises(ValueError, match="valid: trice"):
        get_algorithm("ppo")


def test_gradient_variance_probe_does_not_change_the_training_trajectory(make_tiny_policy, tmp_path):
    def run(variance_every, out):
        algorithm = get_algorithm("trice")(make_tiny_policy(seed=1), CoinTask(), small_config("trice"), seed=1)
        Runner(algorithm, run_config(64, variance_every=variance_every, variance_draws=3), out, progress=False).run()
        return pd.read_csv(out / "trice-seed1.csv")

    plain, probed = run(0, tmp_path / "a"), run(1, tmp_path / "b")
    columns = ["samples_drawn", "train_proposal_acc", "memory_acc", "loss"]
    pd.testing.assert_frame_equal(plain[columns], probed[columns])
    assert probed["grad_variance"].notna().sum() >= 2
    assert np.all(probed["grad_variance"].dropna() >= 0)


def test_solved_examples_follow_each_methods_own_rationales(make_tiny_policy):
    task = CoinTask()
    # TRICE: exactly the memory entries that state the answer.
    trice = get_algorithm("trice")(make_tiny_policy(), task, small_config("trice"), seed=0)
    trice.setup()
    trice.step()
    texts = [make_tiny_policy().tokenizer.decode(trice.memory_rationale(i), skip_special_tokens=True) for i in range(len(trice.train))]
    np.testing.assert_array_equal(trice.solved_examples(), task.score(texts, ["even"] * len(texts)) == 1.0)

    # rft: the examples of the latest visit with at least one correct particle; unvisited: False.
    rft = get_algorithm("rft")(make_tiny_policy(), task, small_config("rft"), seed=0)
    drawn = {}
    original_draw = rft._draw

    def spy(indices):
        drawn["indices"], (samples, correct) = list(indices), original_draw(indices)
        drawn["any"] = correct.any(-1).numpy()
        return samples, correct

    rft._draw = spy
    rft.step()
    expected = np.zeros(len(rft.train), dtype=bool)
    expected[drawn["indices"]] = drawn["any"]
    np.testing.assert_array_equal(rft.solved_examples(), expected)

    # STaR: after its first sampling pass, exactly the examples with a kept rationale.
    star = get_algorithm("star")(make_tiny_policy(), task, small_config("star"), seed=0)
    while star.phase == "sample" and star.iteration == 0:
        star.step()
    assert set(np.flatnonzero(star.solved_examples())) == set(star.kept_index)


def test_the_runner_logs_the_tracked_share_holding_a_correct_rationale(make_tiny_policy, tmp_path):
    tracked = (0, 3, 5, 7)
    algorithm = get_algorithm("trice")(make_tiny_policy(), CoinTask(), small_config("trice"), seed=0)
    Runner(algorithm, run_config(48, tracked_examples=tracked), tmp_path, progress=False).run()
    rows = read_rows(tmp_path / "trice-seed0.csv")
    assert all(r["tracked_solved"] != "" for r in rows)
    assert float(rows[-1]["tracked_solved"]) == pytest.approx(algorithm.memory_correct[list(tracked)].float().mean().item())
    # Methods that keep no rationales leave the column empty.
    grpo = get_algorithm("grpo")(make_tiny_policy(), CoinTask(), small_config("grpo"), seed=0)
    Runner(grpo, run_config(48, tracked_examples=tracked), tmp_path, progress=False).run()
    assert all(r["tracked_solved"] == "" for r in read_rows(tmp_path / "grpo-seed0.csv"))


def test_a_final_validation_evaluation_is_logged_next_to_the_test_one(make_tiny_policy, tmp_path):
    # Validating on the test split itself must reproduce the final greedy test accuracy.
    config = run_config(24, final_validation=EvalConfig(split="test", max_examples=6, majority_k=0, max_new_tokens=8))
    algorithm = get_algorithm("rft")(make_tiny_policy(), CoinTask(), small_config("rft"), seed=0)
    result = Runner(algorithm, config, tmp_path, progress=False).run()
    rows = read_rows(tmp_path / "rft-seed0.csv")
    assert rows[-1]["val_acc_greedy"] == rows[-1]["eval_acc_greedy"] != ""
    assert result["val_acc_greedy"] == result["eval_acc_greedy"]
    assert all(r["val_acc_greedy"] == "" for r in rows[:-1])


def test_a_known_starting_accuracy_replaces_the_step_0_evaluation_and_nothing_else(make_tiny_policy, tmp_path, monkeypatch):
    import trice_rl.runner as runner_module

    calls = []
    real_evaluate = runner_module.evaluate
    monkeypatch.setattr(runner_module, "evaluate", lambda *a, **k: calls.append(a[0].meter.samples) or real_evaluate(*a, **k))
    # TRICE charges its memory initialisation (12 samples) before step 0; the next
    # evaluation is still due at 24 samples.
    evaluated = Runner(get_algorithm("trice")(make_tiny_policy(), CoinTask(), small_config("trice"), seed=0), run_config(60), tmp_path / "a", progress=False)
    evaluated.run()
    known = Runner(
        get_algorithm("trice")(make_tiny_policy(), CoinTask(), small_config("trice"), seed=0),
        run_config(60, initial_eval={"eval_acc_greedy": 0.123}),
        tmp_path / "b",
        progress=False,
    )
    calls.clear()
    known.run()
    rows_a, rows_b = read_rows(tmp_path / "a" / "trice-seed0.csv"), read_rows(tmp_path / "b" / "trice-seed0.csv")
    assert rows_b[0]["eval_acc_greedy"] == "0.123" and rows_a[0]["eval_acc_greedy"] != "0.123"
    assert [r["eval_acc_greedy"] for r in rows_a[1:]] == [r["eval_acc_greedy"] for r in rows_b[1:]]
    assert [r for r in rows_b if r["eval_acc_greedy"] != ""][1]["samples_drawn"] == "24"
    assert calls[0] == 24


def test_majority_only_evaluation_matches_the_full_one(make_tiny_policy):
    policy = make_tiny_policy()
    both = evaluate(policy, CoinTask(), EvalConfig(max_examples=6, majority_k=3, max_new_tokens=8), seed=4)
    majority = evaluate(policy, CoinTask(), EvalConfig(max_examples=6, majority_k=3, max_new_tokens=8, greedy=False), seed=4)
    assert "eval_acc_greedy" not in majority
    assert majority == {k: v for k, v in both.items() if k != "eval_acc_greedy"}
