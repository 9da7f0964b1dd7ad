"""The one training loop: run an algorithm until the budget is spent, evaluate on held-out
data every N samples, append a CSV row per step, checkpoint atomically, resume exactly.

Resuming is exact: a run killed at any point and resumed writes the same rows as the
uninterrupted one (wall-clock columns aside).  A row is counted in a checkpoint only once
it is on disk, resuming cuts the CSV back to the checkpoint's rows (a line torn by the kill
included), and a finished run leaves ``<algo>-seed<k>.result.json``, which a resume
returns without running anything again.

Launched on W processes (``torchrun``), every rank runs this loop on the same state and
takes the same decisions; rank 0 alone writes the files (docs/distributed.md)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from trice_rl import distributed
from trice_rl.algorithm import Algorithm, MinibatchStream
from trice_rl.budget import SAMPLE_LIMITS, Budget
from trice_rl.evaluation import EvalConfig, evaluate

BASE_COLUMNS = (
    "algo",
    "seed",
    "step",
    "samples_drawn",
    "tokens_generated",
    "tokens_scored",
    "grad_steps",
    "wall_seconds",
    "train_flops",
    "train_proposal_acc",
    "eval_acc_greedy",
    "eval_acc_majority",
    "eval_acc_sampled",
    "grad_variance",
    "grad_mean_norm",
    "tracked_solved",
    # procedural tasks (which know their gold steps): the share with every step right of
    # this step's correct samples, of the rationales the method holds (TRICE's correct
    # memory entries, STaR's kept set), and of the greedy test outputs
    "correct_steps_right",
    "held_steps_right",
    "eval_steps_right",
)


@dataclass
class RunConfig:
    budget: Budget
    eval_every: int = 500  # samples drawn between held-out evaluations
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint_every: int = 10  # optimizer-loop steps between checkpoints (also at each eval)
    variance_every: int = 0  # steps between gradient-variance probes (0: never)
    variance_draws: int = 8  # independent estimator draws per probe
    variance_batch: int = 16  # size of the fixed probe batch
    # training-example indices (e.g. the hardest quartile) whose share holding a correct
    # rationale is logged as ``tracked_solved``, for methods that keep rationales
    tracked_examples: tuple[int, ...] = ()
    # an extra evaluation at the end (e.g. greedy on a validation split, for model
    # selection), logged as ``val_acc_greedy`` / ``val_acc_majority``
    final_validation: EvalConfig | None = None
    # the starting policy's held-out accuracies where they are already known (the
    # benchmark's base model, shared by every run of a setting): logged at step 0 instead
    # of evaluating the same model again
    initial_eval: dict[str, float] | None = None
    # a run stops (with a warning) when this many steps in a row spent nothing of the
    # budget's limits other than seconds: an algorithm that cannot spend the budget's kind
    # (STaR under an optimizer-steps budget while it never finds a correct rationale)
    stall_steps: int = 1000


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    """Write a whole file or nothing: a reader never sees a half-written one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def append_line(path: Path, line: str) -> None:
    """Append one line in a single write, on disk before returning: a kill can tear only
    the last line, never one a checkpoint has counted."""
    with open(path, "a", newline="") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def run_files(out_dir: str | os.PathLike, algo: str, seed: int) -> tuple[Path, Path]:
    """Where a run writes its CSV and its checkpoint."""
    out_dir = Path(out_dir)
    return out_dir / f"{algo}-seed{seed}.csv", out_dir / "checkpoints" / f"{algo}-seed{seed}.pt"


def finished_result(out_dir: str | os.PathLike, algo: str, seed: int) -> dict[str, Any] | None:
    """The result a finished run left (its final evaluation and usage), or ``None``."""
    path = run_files(out_dir, algo, seed)[0].with_suffix(".result.json")
    return json.loads(path.read_text()) if path.exists() else None


def add_to_result(out_dir: str | os.PathLike, algo: str, seed: int, values: dict[str, Any]) -> dict[str, Any]:
    """A finished run's result with ``values`` added (a measurement made afterwards, e.g.
    from its final parameters), rewritten atomically."""
    result = finished_result(out_dir, algo, seed)
    if result is None:
        raise FileNotFoundError(f"{algo} seed {seed} in {out_dir} has not finished")
    result |= values
    atomic_write_text(json.dumps(result, indent=2), run_files(out_dir, algo, seed)[0].with_suffix(".result.json"))
    return result


def load_final_parameters(policy, out_dir: str | os.PathLike, algo: str, seed: int) -> None:
    """Load into ``policy`` the tuned parameters of a finished run (its last checkpoint is
    written after training, before the final evaluation)."""
    checkpoint = run_files(out_dir, algo, seed)[1]
    policy.load_tunable_state_dict(torch.load(checkpoint, weights_only=False)["policy"])


class Runner:
    """Drives one (algorithm, seed) run, writing ``<out>/<algo>-seed<seed>.csv``,
    ``<out>/checkpoints/<algo>-seed<seed>.pt`` and, once finished,
    ``<out>/<algo>-seed<seed>.result.json``."""

    def __init__(self, algorithm: Algorithm, config: RunConfig, out_dir: str | os.PathLike, progress: bool = True):
        self.algorithm = algorithm
        self.config = config
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.csv_path, self.checkpoint_path = run_files(self.out_dir, algorithm.name, algorithm.seed)
        self.result_path = self.csv_path.with_suffix(".result.json")  # see finished_result
        extra = ("val_acc_greedy", "val_acc_majority") if config.final_validation else ()
        self.columns = BASE_COLUMNS + extra + tuple(m for m in algorithm.metric_names if m not in BASE_COLUMNS)
        self.rows_written = 0
        self.next_eval = 0
        self.setup_done = False
        self.training_done = False
        self.eval_seconds = 0.0  # wall time in held-out evaluation (test and validation)
        self.stalled, self.spent_before = 0, None  # steps in a row that spent no limit
        self.sync_meter = distributed.MeterSync(algorithm.policy.meter)
        probe_size = min(config.variance_batch, len(algorithm.train))
        self.probe_indices = MinibatchStream(len(algorithm.train), seed=10_000 + algorithm.seed).next(probe_size)

    # ------------------------------------------------------------------ loop
    def run(self, resume: bool = False) -> dict[str, Any]:
        """Set up, train until the budget is spent, evaluate a last time; with ``resume``,
        continue from the checkpoint, or return the result of a run that finished."""
        # Rank 0 decides what is on disk (it may be replacing those files right now).
        if distributed.agree(resume and self.result_path.exists()):
            return json.loads(self.result_path.read_text())
        if distributed.is_main():
            self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        if distributed.agree(resume and self.checkpoint_path.exists()):
            self._load_checkpoint()
        else:
            self._start()
        # One bar from the first second: set-up and evaluations are labelled, the budget's
        # fraction drives it (and tqdm's ETA) while training.
        algorithm = self.algorithm
        bar = tqdm(total=1000, desc=f"{algorithm.name} seed {algorithm.seed}", disable=not (self.progress and distributed.is_main()), leave=False)
        try:
            if not self.setup_done:
                bar.set_postfix_str("set-up and first evaluation")
                row = algorithm.setup() | self._tracked_solved()
                self.sync_meter()
                known = self.config.initial_eval
                self._write_row(row | (self._evaluate(final=False) if known is None else self._skip_evaluation(known)))
                self.setup_done = True
                self._checkpoint()
            if not self.training_done:
                self._train(bar)
                self.training_done = True
                self._checkpoint()  # the final parameters (read back by experiments/benchmark.py)
            bar.set_postfix_str("final evaluation")
            return self._finish()
        finally:
            bar.close()

    def _start(self) -> None:
        """A fresh run: the files of an earlier run in the folder are replaced (its result
        and checkpoint first, so that a kill before the first new checkpoint leaves nothing
        of the old run to resume)."""
        algorithm, meter = self.algorithm, self.algorithm.policy.meter
        if distributed.is_main():
            self.result_path.unlink(missing_ok=True)
            self.checkpoint_path.unlink(missing_ok=True)
        self._start_csv()
        meter.start_clock()  # the run's own time, not a model build before it
        if algorithm.schedule_horizon is None:
            algorithm.schedule_horizon = algorithm.planned_optimizer_steps(self.config.budget)

    def _train(self, bar: tqdm) -> None:
        algorithm, meter, budget = self.algorithm, self.algorithm.policy.meter, self.config.budget
        bar.update(int(1000 * min(meter.fraction_used(budget), 1.0)))
        while not self._should_stop():
            metrics = algorithm.take_step()
            self.sync_meter()
            row = dict(metrics) | self._tracked_solved() | algorithm.pop_rationale_stats()
            if self.config.variance_every and algorithm.steps_done % self.config.variance_every == 0:
                row |= self._variance_probe()
            if self._stalls():
                if distributed.is_main():
                    tqdm.write(f"{algorithm.name} seed {algorithm.seed}: stopped, {self.stalled} steps spent none of the budget's limits")
                break
            evaluated = distributed.agree(meter.samples >= self.next_eval and not meter.exhausted(budget))
            if evaluated:
                row |= self._evaluate(final=False)
            last_row = self._write_row(row)
            if evaluated or algorithm.steps_done % self.config.checkpoint_every == 0:
                self._checkpoint()
            bar.n = int(1000 * min(meter.fraction_used(budget), 1.0))
            activity = algorithm.activity()
            bar.set_postfix(acc=last_row.get("eval_acc_greedy") or "", **({"now": activity} if activity else {"train": f"{metrics.get('train_proposal_acc', float('nan')):.2f}"}))
            bar.refresh()

    def _finish(self) -> dict[str, Any]:
        """The final evaluation row, then the result file that marks the run finished."""
        algorithm = self.algorithm
        final = self._evaluate(final=True) | self._tracked_solved()
        if self.config.final_validation:
            validation = self._timed_evaluation(self.config.final_validation)
            final |= {f"val_{key.removeprefix('eval_')}": value for key, value in validation.items() if key != "eval_acc_sampled"}
        self._write_row(final)
        result = {"algo": algorithm.name, "seed": algorithm.seed, **final, **self._usage(), "eval_seconds": round(self.eval_seconds, 3)}
        if distributed.is_main():
            atomic_write_text(json.dumps(result, indent=2), self.result_path)
        return result

    def _should_stop(self) -> bool:
        """Whether the budget is spent.  A samples limit counts as spent when the next step
        cannot pay for one example; then the algorithm may still finish work that draws no
        samples (:meth:`Algorithm.wrap_up`) while the other limits allow."""
        algorithm, meter, budget = self.algorithm, self.algorithm.policy.meter, self.config.budget
        spent = distributed.agree(meter.spent_limits(budget))  # every rank stops at the same step
        if budget.samples is not None:
            algorithm.sample_allowance = int(budget.samples - meter.samples)
            if algorithm.step_samples() > algorithm.sample_allowance:
                spent.add("samples")
        if not spent:
            return False
        return not (spent <= SAMPLE_LIMITS and algorithm.wrap_up())

    def _stalls(self) -> bool:
        """Whether ``stall_steps`` steps in a row have spent none of the budget's limits
        other than seconds (the count is checkpointed: a resumed run stops where it would)."""
        usage = dataclasses.asdict(self.algorithm.policy.meter.usage())
        spent = [usage[name] for name, limit in dataclasses.asdict(self.config.budget).items() if limit is not None and name != "seconds"]
        self.stalled = self.stalled + 1 if spent == self.spent_before else 0
        self.spent_before = spent
        return self.stalled >= self.config.stall_steps

    # ------------------------------------------------------------ evaluation
    def _evaluate(self, final: bool) -> dict[str, float]:
        eval_config = self.config.eval
        if not final:
            eval_config = EvalConfig(**{**eval_config.__dict__, "majority_k": 0})
        self._schedule_next_eval()
        return self._timed_evaluation(eval_config)

    def _timed_evaluation(self, eval_config: EvalConfig) -> dict[str, float]:
        algorithm = self.algorithm
        started = time.perf_counter()
        try:
            return evaluate(algorithm.policy, algorithm.task, eval_config, prompt_kind=algorithm.prompt_kind, seed=algorithm.seed)
        finally:
            self.eval_seconds += time.perf_counter() - started

    def _skip_evaluation(self, known: dict[str, float]) -> dict[str, float]:
        self._schedule_next_eval()
        return dict(known)

    def _schedule_next_eval(self) -> None:
        self.next_eval = (self.algorithm.policy.meter.samples // self.config.eval_every + 1) * self.config.eval_every

    def _tracked_solved(self) -> dict[str, float]:
        solved = self.algorithm.solved_examples()
        if not self.config.tracked_examples or solved is None:
            return {}
        return {"tracked_solved": float(solved[list(self.config.tracked_examples)].mean())}

    def _variance_probe(self) -> dict[str, float]:
        """Trace of the covariance of the gradient estimator on a fixed batch, from several
        independent draws at the same parameters; not charged, and the policy's random
        state is restored so that probing never changes the training trajectory."""
        policy = self.algorithm.policy
        rng = policy.rng_state()
        with policy.meter.paused():
            draws = [self.algorithm.estimate_gradient(self.probe_indices) for _ in range(self.config.variance_draws)]
        policy.set_rng_state(rng)
        if any(d is None for d in draws):
            return {}
        stacked = torch.stack(draws).double()
        variance = stacked.var(dim=0, unbiased=True).sum()
        return {"grad_variance": float(variance), "grad_mean_norm": float(stacked.mean(0).norm())}

    # --------------------------------------------------------------- logging
    def _usage(self) -> dict[str, Any]:
        meter = self.algorithm.policy.meter
        return {
            "samples_drawn": meter.samples,
            "tokens_generated": meter.tokens_generated,
            "tokens_scored": meter.tokens_scored,
            "grad_steps": meter.optimizer_steps,
            "wall_seconds": round(meter.seconds, 3),
            "train_flops": meter.flops,
        }

    def _start_csv(self) -> None:
        if distributed.is_main():
            atomic_write_text(_csv_line(self.columns), self.csv_path)
        self.rows_written = 0

    def _write_row(self, metrics: dict[str, Any]) -> dict[str, Any]:
        row = {"algo": self.algorithm.name, "seed": self.algorithm.seed, "step": self.algorithm.steps_done, **self._usage(), **metrics}
        if distributed.is_main():  # every rank holds the same row (wall-clock columns aside)
            append_line(self.csv_path, _csv_line([_cell(row.get(column)) for column in self.columns]))
        self.rows_written += 1
        return row

    def _cut_csv(self) -> None:
        """Keep the header and the rows the checkpoint counted: the resumed run writes the
        later ones again (a line torn by a kill goes with them)."""
        keep = 1 + self.rows_written
        with open(self.csv_path, "rb") as f:
            lines = f.readlines()
        if len(lines) < keep or not lines[keep - 1].endswith(b"\n"):
            raise RuntimeError(f"{self.csv_path} holds fewer rows than its checkpoint counted ({self.rows_written}); start the run afresh")
        os.truncate(self.csv_path, sum(len(line) for line in lines[:keep]))

    # ----------------------------------------------------------- checkpoints
    def _checkpoint(self) -> None:
        """Rank 0 saves the run: every rank holds the same state but its own sampling
        generator, so the checkpoint keeps each rank's (``rank_rngs``)."""
        policy = self.algorithm.policy
        rank_rngs = distributed.gather([policy.rng_state()])
        if not distributed.is_main():
            return
        atomic_torch_save(
            {
                "policy": policy.tunable_state_dict(),
                "policy_rng": policy.rng_state(),
                "rank_rngs": rank_rngs,
                "meter": policy.meter.state_dict(),
                "algorithm": self.algorithm.state_dict(),
                "rows_written": self.rows_written,
                "next_eval": self.next_eval,
                "setup_done": self.setup_done,
                "training_done": self.training_done,
                "eval_seconds": self.eval_seconds,
                "stall": (self.stalled, self.spent_before),
            },
            self.checkpoint_path,
        )

    def _load_checkpoint(self) -> None:
        state = torch.load(self.checkpoint_path, weights_only=False)
        policy = self.algorithm.policy
        policy.load_tunable_state_dict(state["policy"])
        policy.meter.load_state_dict(state["meter"])
        self.sync_meter.mark()
        self.algorithm.load_state_dict(state["algorithm"])
        self._restore_rng(state.get("rank_rngs", [state["policy_rng"]]))
        self.rows_written = state["rows_written"]
        self.next_eval = state["next_eval"]
        self.setup_done = state["setup_done"]
        self.training_done = state.get("training_done", False)
        self.eval_seconds = state.get("eval_seconds", 0.0)
        self.stalled, self.spent_before = state.get("stall", (0, None))
        if distributed.is_main():
            self._cut_csv()

    def _restore_rng(self, rank_rngs: list[torch.Tensor]) -> None:
        """Each rank's sampling generator as checkpointed, so that a resumed run draws what
        the uninterrupted one would; run by another number of ranks, each rank starts a
        fresh stream (seeded from the seed, its rank, the world size and the step)."""
        policy, world_size = self.algorithm.policy, distributed.world_size()
        if len(rank_rngs) == world_size:
            policy.set_rng_state(rank_rngs[distributed.rank()])
        else:
            policy.generator.manual_seed(distributed.rank_seed(self.algorithm.seed, world_size, self.algorithm.steps_done))


def _csv_line(cells: list[Any] | tuple[Any, ...]) -> str:
    line = io.StringIO()
    csv.writer(line).writerow(cells)
    return line.getvalue()


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
