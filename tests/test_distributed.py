"""Data-parallel runs (trice_rl/distributed.py): with the same samples, two ranks take the
step that one process takes on the same global batch, a two-rank run writes the CSV of a
one-process run (once), and a checkpoint resumes with another number of ranks.

"The same samples": :class:`ScriptedSampler` replaces ``Policy.sample`` by a fixed function
of the prompt, the sample's number and the algorithm's step, so that a sample does not
depend on which rank draws it.  Ranks are forked processes joined in a gloo group; the
``slow`` tests launch ``experiments/compare.py`` under ``torchrun``."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from algorithms import get_algorithm
from trice_rl import distributed
from trice_rl.budget import Budget
from trice_rl.evaluation import EvalConfig
from trice_rl.policy import Policy, Samples
from trice_rl.runner import Runner, RunConfig

from .conftest import REPO, CoinTask

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available() and hasattr(os, "fork")), reason="forks ranks joined by gloo")

LETTERS = range(14, 40)  # token ids of plain characters of the built-in tokenizer


class ScriptedSampler:
    """Stands in for ``Policy.sample``: sample j of a prompt at the algorithm's step s is a
    fixed function of (prompt, j, s), charged to the meter like a real sample."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.algorithm = None

    def __call__(self, prompts, n=1, *, max_new_tokens=8, **_):
        step = self.algorithm.steps_done if self.algorithm is not None else 0
        token_ids = []
        for prompt in prompts:
            for j in range(n):
                generator = torch.Generator().manual_seed(zlib.crc32(f"{prompt}|{j}|{step}".encode()))
                length = int(torch.randint(1, max_new_tokens + 1, (1,), generator=generator))
                token_ids.append(torch.randint(LETTERS.start, LETTERS.stop, (length,), generator=generator).tolist())
        texts = [self.policy.tokenizer.decode(ids) for ids in token_ids]
        self.policy.meter.add_samples(len(token_ids), sum(map(len, token_ids)))
        self.policy.charge_flops(len(token_ids), sum(map(len, token_ids)), backprop=False)
        return Samples(texts, token_ids, torch.zeros(len(token_ids)), [i for i in range(len(prompts)) for _ in range(n)], [True] * len(token_ids))


def in_ranks(world_size: int, job, folder: Path) -> list:
    """``job()`` in ``world_size`` forked processes joined in one gloo group; what each
    returned, by rank."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def entry(rank: int) -> None:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
        try:
            torch.save(job(), folder / f"rank{rank}.pt")
        finally:
            dist.destroy_process_group()

    mp.start_processes(entry, nprocs=world_size, start_method="fork")
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]


def with_sgd(cls: type) -> type:
    """The algorithm with plain SGD instead of AdamW: Adam's per-weight normalisation turns
    the round-off of a near-zero gradient summed in another order into a step of up to lr,
    which would hide the comparison under a tolerance of lr."""
    return type(cls.__name__, (cls,), {"make_optimizer": lambda self: torch.optim.SGD(self.policy.trainable_parameters(), lr=self.config.lr)})


@pytest.fixture(scope="module")
def build_algorithm(tiny_config, char_tokenizer):
    """An algorithm on a tiny policy that samples from a :class:`ScriptedSampler`."""
    from transformers import LlamaForCausalLM

    def build(name: str, **overrides):
        cls = with_sgd(get_algorithm(name))
        torch.manual_seed(0)
        policy = Policy(LlamaForCausalLM(tiny_config), char_tokenizer, tune=cls.default_tune or "full", seed=0, soft_prompt_text="think first")
        policy.sample = ScriptedSampler(policy)
        # 5 examples a step: two ranks take uneven shares (2 and 3).
        algorithm = cls(policy, CoinTask(), cls.Config(batch_size=5, max_new_tokens=6, lr=0.1, **overrides), seed=0)
        policy.sample.algorithm = algorithm
        return algorithm

    return build


# --------------------------------------------------------------------------------------
# One algorithm's steps: W=2 equals W=1
# --------------------------------------------------------------------------------------

SCENARIOS = {
    "trice": ("trice", {}),
    "trice-subsampled": ("trice", {"num_gradient_samples": 4}),
    "trice-nocv-lazy": ("trice-nocv", {"memory_init": "lazy"}),
    "trice-k": ("trice-k", {"num_proposals": 3}),
    "star": ("star", {"initial_inner_steps": 2}),
    "rest-em": ("rest-em", {"samples_per_example": 3, "max_kept_per_example": 2, "initial_inner_steps": 2}),
    "rft": ("rft", {"particles": 3}),
    "grpo-kl": ("grpo", {"group_size": 3, "kl_coef": 0.1}),
    "cot-sft": ("cot-sft", {}),
    "prompt-tuning": ("prompt-tuning", {}),
}
STEPS = 5  # STaR: three sampling steps over the 12 examples, then fine-tuning


def take_steps(algorithm) -> dict:
    """Set-up and STEPS steps; what they logged, the weights each gradient call used, and
    the parameters and rationales held at the end."""
    calls = []
    accumulate = algorithm.policy.accumulate_gradient

    def recording(prompts, completions, coefficients, **kwargs):
        calls.append((list(prompts), [list(c) for c in completions], torch.as_tensor(coefficients).tolist()))
        return accumulate(prompts, completions, coefficients, **kwargs)

    algorithm.policy.accumulate_gradient = recording
    rows = [algorithm.setup()]
    for _ in range(STEPS):
        rows.append(algorithm.step())
        algorithm.steps_done += 1
    return {
        "rows": rows,
        "calls": calls,
        "parameters": algorithm.policy.tunable_state_dict(),
        "held": algorithm.held_rationales(),
        "solved": algorithm.solved_examples(),
        "generator": algorithm.policy.rng_state(),
    }


@pytest.fixture(scope="module")
def steps_by_world_size(build_algorithm, tmp_path_factory):
    """Every scenario's steps in one process, and in two ranks (one fork for them all)."""
    one = {key: take_steps(build_algorithm(name, **overrides)) for key, (name, overrides) in SCENARIOS.items()}
    two = in_ranks(2, lambda: {key: take_steps(build_algorithm(name, **overrides)) for key, (name, overrides) in SCENARIOS.items()}, tmp_path_factory.mktemp("steps"))
    return one, two


def assert_rows_close(rows, expected):
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        assert row.keys() == want.keys()
        assert row == pytest.approx(want, rel=1e-4, abs=1e-6, nan_ok=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_two_ranks_take_the_steps_of_one_process_on_the_same_batch(scenario, steps_by_world_size):
    one, two = steps_by_world_size
    one, two = one[scenario], [rank[scenario] for rank in two]
    for rank in two:
        for name, value in one["parameters"].items():
            torch.testing.assert_close(rank["parameters"][name], value, rtol=1e-5, atol=1e-6)  # round-off only
        assert_rows_close(rank["rows"], one["rows"])  # batch-wide metrics: every rank logs the whole batch's
        assert rank["held"] == one["held"]  # TRICE's memory, STaR's kept set: on every rank
        assert (rank["solved"] is None and one["solved"] is None) or (rank["solved"] == one["solved"]).all()
    # Each gradient call's rows are split between the ranks with the weights one process
    # gives them: TRICE's K and control variate (rft's E, GRPO's M·G) are the whole batch's.
    assert len(two[0]["calls"]) == len(two[1]["calls"]) == len(one["calls"]) > 0
    for call, first, second in zip(one["calls"], two[0]["calls"], two[1]["calls"]):
        assert first[0] + second[0] == call[0] and first[1] + second[1] == call[1]
        assert first[2] + second[2] == pytest.approx(call[2], rel=1e-5)
    # Each rank samples from its own stream.
    assert not torch.equal(two[0]["generator"], two[1]["generator"])


def test_gradients_are_summed_and_a_parameter_without_any_gradient_keeps_none(tmp_path):
    def job():
        weights = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(1))]
        weights[0].grad = torch.full((2,), 1.0 + distributed.rank())
        if distributed.rank() == 1:
            weights[1].grad = torch.ones(3)
        distributed.sum_gradients(weights)
        return [None if w.grad is None else w.grad.tolist() for w in weights]

    for grads in in_ranks(2, job, tmp_path):
        assert grads == [[3.0, 3.0], [1.0, 1.0, 1.0], None]


def test_every_rank_starts_from_rank_0s_parameters(make_tiny_policy, tmp_path):
    def job():
        policy = make_tiny_policy(tune="lora", seed=distributed.rank())  # a random LoRA initialisation
        get_algorithm("rft")(policy, CoinTask(), seed=0)
        return policy.tunable_state_dict()

    first, second = in_ranks(2, job, tmp_path)
    for name, value in first.items():
        assert torch.equal(second[name], value)
    assert not all(torch.equal(make_tiny_policy(tune="lora", seed=1).tunable_state_dict()[name], value) for name, value in first.items())


# --------------------------------------------------------------------------------------
# Whole runs: the CSV of one process, written once; resuming with another world size
# --------------------------------------------------------------------------------------

RUN = RunConfig(
    budget=Budget(samples=40),
    eval_every=20,
    eval=EvalConfig(max_examples=6, majority_k=2, max_new_tokens=8),
    checkpoint_every=2,
    variance_every=2,
    variance_draws=2,
    variance_batch=4,
)


def run(build_algorithm, name: str, out: Path, resume: bool = False, crash_at: int | None = None) -> list[int]:
    """A run of ``name`` in ``out``: the numbers of the steps it took (up to ``crash_at``,
    where it stops as if the user pressed Ctrl-C)."""
    algorithm = build_algorithm(name, initial_inner_steps=2) if name == "star" else build_algorithm(name)
    taken, step = [], algorithm.step

    def watched_step():
        if algorithm.steps_done == crash_at:
            raise KeyboardInterrupt
        taken.append(algorithm.steps_done)
        return step()

    algorithm.step = watched_step
    with contextlib.suppress(KeyboardInterrupt):
        Runner(algorithm, RUN, out, progress=False).run(resume=resume)
    return taken


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).drop(columns="wall_seconds")


def assert_same_csv(path: Path, expected: Path) -> None:
    pd.testing.assert_frame_equal(read_csv(path), read_csv(expected), rtol=1e-4)


@pytest.mark.parametrize("name", ["trice", "star"])
def test_two_ranks_write_the_csv_of_one_process_once(name, build_algorithm, tmp_path):
    steps = run(build_algorithm, name, tmp_path / "one")
    assert in_ranks(2, lambda: run(build_algorithm, name, tmp_path / "two"), tmp_path) == [steps, steps]
    assert_same_csv(tmp_path / "two" / f"{name}-seed0.csv", tmp_path / "one" / f"{name}-seed0.csv")
    written = sorted(p.relative_to(tmp_path / "two").as_posix() for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert written == [f"checkpoints/{name}-seed0.pt", f"{name}-seed0.csv", f"{name}-seed0.result.json"]


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_with_another_number_of_ranks(before, after, build_algorithm, tmp_path):
    """A run stopped at step 3 continues from its checkpoint of step 2 with another number
    of ranks, and ends as the uninterrupted run (a process group of one rank is a plain run)."""
    steps = run(build_algorithm, "trice", tmp_path / "whole")
    split = tmp_path / "split"
    assert in_ranks(before, lambda: run(build_algorithm, "trice", split, crash_at=3), tmp_path) == [steps[:3]] * before
    assert in_ranks(after, lambda: run(build_algorithm, "trice", split, resume=True), tmp_path) == [steps[2:]] * after
    assert_same_csv(split / "trice-seed0.csv", tmp_path / "whole" / "trice-seed0.csv")


# --------------------------------------------------------------------------------------
# experiments/compare.py under torchrun
# --------------------------------------------------------------------------------------

SMOKE = ["--preset", "smoke", "--no-progress", "--set", "max_new_tokens=24"]


def torchrun(world_size: int, *args: str, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}", str(REPO / "experiments" / "compare.py"), *args]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **popen)


def kill(process: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers (it starts each in a session of its own)."""
    workers = [int(stat.name) for stat in Path("/proc").glob("[0-9]*") if _parent(stat) == process.pid]
    for pid in [*workers, process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    process.communicate()


def _parent(proc_folder: Path) -> int | None:
    try:
        return int((proc_folder / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-3000:]


def outputs(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


@pytest.mark.slow
def test_compare_under_torchrun_finishes_once_and_resumes_after_a_kill(builtin_cache, data_dir, tmp_path):
    args = [*SMOKE, "--algos", "trice,star"]
    finish(torchrun(2, *args, "--out", str(tmp_path / "whole")))
    assert outputs(tmp_path / "whole") == [
        "checkpoints/star-seed0.pt", "checkpoints/trice-seed0.pt", "config.json", "curves.png", "curves_flops.png",
        "star-seed0.csv", "star-seed0.result.json", "summary.csv", "trice-seed0.csv", "trice-seed0.result.json",
    ]
    rows = list(csv.DictReader(open(tmp_path / "whole" / "trice-seed0.csv")))
    assert [int(r["step"]) for r in rows[:-1]] == list(range(len(rows) - 1))  # each row once
    assert int(rows[-1]["samples_drawn"]) == 96  # the world's samples, not one rank's

    killed = torchrun(2, *args, "--out", str(tmp_path / "split"))
    checkpoint = tmp_path / "split" / "checkpoints" / "trice-seed0.pt"
    while not checkpoint.exists() and killed.poll() is None:
        time.sleep(0.05)
    kill(killed)
    assert not (tmp_path / "split" / "summary.csv").exists()
    finish(torchrun(2, *args, "--out", str(tmp_path / "split"), "--resume"))
    assert outputs(tmp_path / "split") == outputs(tmp_path / "whole")
    for name in ("trice", "star"):  # each rank's sampling stream was checkpointed: an exact resume
        assert_same_csv(tmp_path / "split" / f"{name}-seed0.csv", tmp_path / "whole" / f"{name}-seed0.csv")


@pytest.mark.slow
def test_one_rank_under_torchrun_equals_a_plain_run(builtin_cache, data_dir, tmp_path):
    args = [*SMOKE, "--algos", "trice"]
    plain = subprocess.run([sys.executable, str(REPO / "experiments" / "compare.py"), *args, "--out", str(tmp_path / "plain")], cwd=REPO, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-3000:]
    finish(torchrun(1, *args, "--out", str(tmp_path / "torchrun")))
    pd.testing.assert_frame_equal(read_csv(tmp_path / "torchrun" / "trice-seed0.csv"), read_csv(tmp_path / "plain" / "trice-seed0.csv"))
