"""STaR: the Self-Taught Reasoner (Zelikman, Wu, Mu and Goodman, NeurIPS 2022), with
rationalization.  The baseline of docs/algorithms.md §5.

STaR alternates two phases, one outer *iteration* at a time:

1. **Sample.**  For every training example x draw a rationale z ~ p_θ(z | x) under the
   un-hinted CoT prompt.  Keep (x, z) if z reaches the right answer.  *Rationalization*: for
   an example whose rationale failed, draw again under the hinted prompt (the answer is
   revealed: ``task.hinted_prompt``) and keep that rationale if it is correct.  Every kept
   pair is stored with the **un-hinted** prompt: the hint helps to *find* a rationale, but
   the model is trained to produce it without the hint (Zelikman et al. §3.2).
2. **Fine-tune** on the kept set by maximising Σ log p_θ(z | x) for a number of optimizer
   steps.  As in the original STaR, each iteration restarts from the base parameters (the
   tunable parameters at construction, and a fresh optimizer) and trains for more steps
   than the last: ``initial_inner_steps`` growing by ``inner_steps_growth`` (+20%) per
   iteration (STaR: "40 training steps, increased by 20% each outer loop"), optionally
   capped at ``max_inner_steps``.

The runner calls :meth:`Star.step` until the budget is spent, so a step is one unit of work of
a small state machine: either one sampling pass over a chunk of examples (``phase ==
"sample"``) or one inner fine-tuning step (``phase == "train"``).  The budget can stop the
run between any two of them, and a checkpoint holds only the kept set (example index and
token ids per rationale), the counters and, for restarts, the base parameters.

Choices where STaR leaves room (docs/algorithms.md §5):

* An iteration visits ``examples_per_iteration`` examples (default: the whole training
  split) in the shared minibatch order (``self.stream``), so iteration t with the default
  is exactly epoch t of the order every algorithm sees.
* Restarts happen at the first inner step of an iteration, not at the end of sampling, so
  a held-out evaluation during sampling always sees the model of the previous iteration.
* Inner steps of iteration t (counted from 0): ``round_half_up(initial * growth ** t)``, at
  least 1.  Each inner step takes a minibatch of ``min(batch_size, len(kept))`` kept
  rationales without replacement within an epoch of the kept set (a seeded order per
  iteration) and minimises the mean over the minibatch of -log p_θ(z | x) (summed over the
  rationale's tokens, not length-normalised, like every estimator in this project).
* Sampled rationales are trained on by their exact token ids, which include the EOS token
  (or the stop string) that ended them: the model learns where to stop.
* ``samples_per_example`` > 1 and ``max_kept_per_example`` generalise STaR's one sample
  per example; the distinct correct samples (by token ids) are kept, up to the cap.
  ReST-EM (``rest-em``, :class:`RestEM`; Singh et al. 2023, "Beyond Human Data") is this
  class with 8 samples per example, at most 4 kept, no rationalization and a fixed 40 inner
  steps per round, each round from the base parameters.
* An iteration whose kept set is empty skips fine-tuning (there is nothing to train on; the
  parameters stay as they are) and moves on to the next iteration.
* :meth:`Star.estimate_gradient` returns ``None``: STaR's update is a deterministic
  supervised step on a kept set sampled from an *earlier* model, not a stochastic estimate
  of the gradient at the current parameters, so the variance probe has nothing to measure.

Logged per sampling step: ``train_proposal_acc`` (the fraction of this step's un-hinted
samples that are correct), and, cumulated over the examples visited so far in the current
iteration, ``kept_fraction`` (examples with a kept rationale) and ``rationalized_fraction``
(examples kept only thanks to the hint); ``rationalization_acc`` is the fraction of this
step's hinted samples that are correct.  Per inner step: ``loss`` (mean -log p(z|x) on the
minibatch) and ``grad_norm``.  Both: ``iteration``, ``kept_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from trice_rl.algorithm import Algorithm, AlgorithmConfig, MinibatchStream
from trice_rl.options import option

PHASES = ("sample", "train")


@dataclass
class StarConfig(AlgorithmConfig):
    """STaR settings on top of :class:`~trice_rl.algorithm.AlgorithmConfig`.

    ``batch_size`` is the minibatch of kept rationales per inner step and, unless
    ``sample_chunk_size`` is set, the number of examples per sampling step.
    """

    rationalize: bool = option(True, "retry failures with the answer hint (trained without it)")
    restart_from_base: bool = option(True, "each iteration fine-tunes from the base parameters")
    initial_inner_steps: int = option(40, "optimizer steps of iteration 0 (STaR: 40)")
    inner_steps_growth: float = option(1.2, "inner steps grow by this factor per iteration")
    # Cap on an iteration's inner steps (None: none, as STaR).  Uncapped growth never ends
    # a long run: 6,400 samples over 150 examples are ~40 iterations, and 40·1.2^40 inner
    # steps.  The cap (5x the initial 40, reached at iteration 9) is logged per row as
    # ``planned_inner_steps``.
    max_inner_steps: int | None = option(200, "cap on an iteration's fine-tuning steps (null: none, as STaR)")
    examples_per_iteration: int | None = option(None, "None: the whole training split")
    sample_chunk_size: int | None = option(None, "examples per sampling step; None: batch_size")
    samples_per_example: int = option(1, "un-hinted (and hinted) samples per example")
    max_kept_per_example: int = option(1, "distinct correct rationales kept per example")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("initial_inner_steps", "samples_per_example", "max_kept_per_example"):
            if getattr(self, name) < 1:
                raise ValueError(f"StarConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.inner_steps_growth <= 0:
            raise ValueError(f"StarConfig.inner_steps_growth must be positive, got {self.inner_steps_growth}")
        for name in ("examples_per_iteration", "sample_chunk_size", "max_inner_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"StarConfig.{name} must be at least 1 (or None), got {value}")


def inner_steps_for(iteration: int, initial: int, growth: float, cap: int | None = None) -> int:
    """Inner fine-tuning steps of outer iteration ``iteration`` (from 0): initial·growth^t,
    rounded half up, at least 1, at most ``cap``.  With STaR's 40 and 1.2: 40, 48, 58, 69, 83, ..."""
    steps = max(1, math.floor(initial * growth**iteration + 0.5))
    return steps if cap is None else min(steps, cap)


class Star(Algorithm):
    """STaR with rationalization; see the module docstring."""

    name: ClassVar[str] = "star"
    Config: ClassVar[type] = StarConfig
    config: StarConfig  # the typed view of Algorithm.config
    metric_names: ClassVar[tuple[str, ...]] = (
        "train_proposal_acc",
        "kept_fraction",
        "rationalized_fraction",
        "rationalization_acc",
        "kept_size",
        "iteration",
        "inner_step",
        "planned_inner_steps",
        "loss",
        "grad_norm",
    )

    def __init__(self, policy, task, config: StarConfig | None = None, seed: int = 0):
        super().__init__(policy, task, config, seed)
        config = self.config
        # Base parameters to restart from (CPU copies, so a GPU holds the model only once).
        self.base_state = (
            {name: value.cpu() for name, value in policy.tunable_state_dict().items()} if config.restart_from_base else None
        )
        self.examples_per_iteration = config.examples_per_iteration or len(self.train)
        self.chunk_size = config.sample_chunk_size or config.batch_size
        self.iteration = 0
        self.phase = "sample"
        # Whether each example's latest sampling visit kept a rationale (hinted or not).
        self.solved = np.zeros(len(self.train), dtype=bool)
        self._start_iteration()

    def _start_iteration(self) -> None:
        self.phase = "sample"
        self.inner_step = 0
        self.examples_seen = 0  # examples visited by this iteration's sampling so far
        self.examples_kept = 0  # ... of which have at least one kept rationale
        self.examples_rationalized = 0  # ... of which were kept only thanks to the hint
        self.kept_index: list[int] = []  # training-example index of each kept rationale
        self.kept_tokens: list[list[int]] = []  # its exact token ids
        self.kept_rationalized: list[bool] = []  # whether it was found with the hint
        self.kept_stream: MinibatchStream | None = None

    # ------------------------------------------------------------------ step
    def step(self) -> dict[str, float]:
        if self.phase == "sample":
            return self._sample_step()
        return self._train_step()

    def samples_per_example(self) -> int:
        """A sampling step draws n samples per example and, to rationalize a failure, n more."""
        if self.phase == "train":
            return 0
        return self.config.samples_per_example * (2 if self.config.rationalize else 1)

    def activity(self) -> str | None:
        return f"fine-tuning {self.inner_step}/{self.inner_steps()}" if self.phase == "train" else None

    def wrap_up(self) -> bool:
        """The samples budget is spent: fine-tune on what this iteration has kept so far
        (never end on the previous iteration's model with paid samples thrown away)."""
        if self.phase == "sample" and self.kept_index:
            self._begin_training()
        return self.phase == "train"

    def _begin_training(self) -> None:
        self.phase = "train"
        self.kept_stream = MinibatchStream(len(self.kept_index), self._kept_seed())

    def _sample_step(self) -> dict[str, float]:
        """Sample one chunk of examples, rationalize its failures, extend the kept set."""
        config = self.config
        n = config.samples_per_example
        indices = self.next_batch(min(self.chunk_size, self.examples_per_iteration - self.examples_seen))
        samples = self.sample(self.cot_prompts(indices), n=n)
        correct = self.correct(samples, indices).reshape(len(indices), n)
        kept = self._keep(indices, samples.token_ids, correct, rationalized=False)
        self.solved[indices] = [count > 0 for count in kept]

        metrics: dict[str, float] = {"train_proposal_acc": float(correct.mean())}
        self.examples_kept += sum(count > 0 for count in kept)
        failed = [i for i, count in zip(indices, kept) if count == 0]
        if config.rationalize and failed:
            # The hint is in the sampling context only: _keep stores the example index, and
            # training rebuilds the un-hinted CoT prompt from it.
            hinted = self.sample(self.hinted_prompts(failed), n=n)
            hinted_correct = self.correct(hinted, failed).reshape(len(failed), n)
            rescued_counts = self._keep(failed, hinted.token_ids, hinted_correct, rationalized=True)
            self.solved[failed] = [count > 0 for count in rescued_counts]
            rescued = sum(count > 0 for count in rescued_counts)
            self.examples_rationalized += rescued
            self.examples_kept += rescued
            metrics["rationalization_acc"] = float(hinted_correct.mean())
        self.examples_seen += len(indices)
        metrics |= {
            "kept_fraction": self.examples_kept / self.examples_seen,
            "rationalized_fraction": self.examples_rationalized / self.examples_seen,
            "kept_size": float(len(self.kept_index)),
            "iteration": float(self.iteration),
        }
        if self.examples_seen >= self.examples_per_iteration:
            if self.kept_index:
                self._begin_training()
            else:  # nothing to fine-tune on: keep the parameters, sample again
                self.iteration += 1
                self._start_iteration()
        return metrics

    def _keep(self, indices: Sequence[int], token_ids: list[list[int]], correct: np.ndarray, rationalized: bool) -> list[int]:
        """Add the distinct correct samples of each example (prompt-major rows, up to
        ``max_kept_per_example``) to the kept set; returns how many were kept per example."""
        n = correct.shape[1]
        counts = []
        for m, index in enumerate(indices):
            seen: set[tuple[int, ...]] = set()
            for j in range(n):
                ids = tuple(token_ids[m * n + j])
                if correct[m, j] and ids not in seen and len(seen) < self.config.max_kept_per_example:
                    seen.add(ids)
                    self.kept_index.append(int(index))
                    self.kept_tokens.append(list(ids))
                    self.kept_rationalized.append(rationalized)
            counts.append(len(seen))
        return counts

    def _kept_seed(self) -> int:
        """Seed of the order in which iteration ``self.iteration`` visits its kept set."""
        return int(np.random.SeedSequence([self.seed, self.iteration, 0x57A2]).generate_state(1)[0])

    def _train_step(self) -> dict[str, float]:
        """One supervised step on the kept set: minimise mean -log p(z | x), un-hinted x."""
        config = self.config
        if self.inner_step == 0:
            if config.restart_from_base:
                self.policy.load_tunable_state_dict(self.base_state)
                self.optimizer = self.make_optimizer()
            # A learning-rate schedule spans one iteration's fine-tuning.
            self.schedule_step = 0
            self.schedule_horizon = config.schedule_steps or self.inner_steps()
        batch = self.kept_stream.next(min(config.batch_size, len(self.kept_index)))
        prompts = self.cot_prompts([self.kept_index[j] for j in batch])
        completions = [self.kept_tokens[j] for j in batch]
        metrics = self.supervised_step(prompts, completions) | {
            "iteration": float(self.iteration),
            "inner_step": float(self.inner_step),
            "planned_inner_steps": float(self.inner_steps()),
            "kept_size": float(len(self.kept_index)),
        }
        self.inner_step += 1
        if self.inner_step >= self.inner_steps():
            self.iteration += 1
            self._start_iteration()
        return metrics

    def inner_steps(self, iteration: int | None = None) -> int:
        """Fine-tuning steps of an iteration (the current one by default)."""
        iteration = self.iteration if iteration is None else iteration
        return inner_steps_for(iteration, self.config.initial_inner_steps, self.config.inner_steps_growth, self.config.max_inner_steps)

    def estimate_gradient(self, indices: Sequence[int]) -> torch.Tensor | None:
        """``None``: STaR's step is a deterministic supervised step on a kept set drawn from
        an earlier model, not a stochastic gradient estimate at the current parameters."""
        return None

    def solved_examples(self) -> np.ndarray:
        return self.solved.copy()

    def held_rationales(self) -> tuple[list[int], list[list[int]]]:
        return list(self.kept_index), [list(ids) for ids in self.kept_tokens]

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {
            "phase": self.phase,
            "iteration": self.iteration,
            "inner_step": self.inner_step,
            "examples_seen": self.examples_seen,
            "examples_kept": self.examples_kept,
            "examples_rationalized": self.examples_rationalized,
            "kept_index": list(self.kept_index),
            "kept_tokens": [list(ids) for ids in self.kept_tokens],
            "kept_rationalized": list(self.kept_rationalized),
            "kept_stream": None if self.kept_stream is None else self.kept_stream.state_dict(),
            "base_state": self.base_state,
            "solved": self.solved.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state["phase"] not in PHASES:
            raise ValueError(f"unknown STaR phase {state['phase']!r} in the checkpoint")
        self.phase = state["phase"]
        self.iteration = int(state["iteration"])
        self.inner_step = int(state["inner_step"])
        self.examples_seen = int(state["examples_seen"])
        self.examples_kept = int(state["examples_kept"])
        self.examples_rationalized = int(state["examples_rationalized"])
        self.kept_index = [int(i) for i in state["kept_index"]]
        self.kept_tokens = [list(ids) for ids in state["kept_tokens"]]
        self.kept_rationalized = [bool(r) for r in state["kept_rationalized"]]
        self.solved = np.asarray(state["solved"], dtype=bool).copy()
        self.kept_stream = None
        if state["kept_stream"] is not None:
            self.kept_stream = MinibatchStream(len(self.kept_index), self._kept_seed())
            self.kept_stream.load_state_dict(state["kept_stream"])
        if state.get("base_state") is not None:
            self.base_state = state["base_state"]


@dataclass
class RestEMConfig(StarConfig):
    """ReST-EM's settings: STaR without rationalization, several samples per example with a
    cap on the kept ones, and the same number of inner steps every round."""

    rationalize: bool = False
    inner_steps_growth: float = 1.0
    samples_per_example: int = 8
    max_kept_per_example: int = 4


class RestEM(Star):
    """ReST-EM (``rest-em``): offline rounds of sampling and fine-tuning from the base."""

    name: ClassVar[str] = "rest-em"
    Config: ClassVar[type] = RestEMConfig
    config: RestEMConfig
