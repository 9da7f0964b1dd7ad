"""One meter for every run, so that algorithms are compared under identical budgets.

The Policy reports every sample drawn, token generated, token scored, optimizer step and
model FLOP to its :class:`BudgetMeter`; the runner stops an algorithm when a :class:`Budget`
is spent.  Evaluation runs inside :meth:`BudgetMeter.paused` and is not charged.

Training compute is counted in model FLOPs by the standard rule (Kaplan et al. 2020): a
token that only goes forward (a prompt or generated token while sampling, a token scored
without a gradient) costs 2·N, a token that is back-propagated costs 6·N, where N is the
number of non-embedding parameters that the token's forward pass multiplies by.  Where only
part of the model is tuned, the backward pass still propagates activation gradients through
all of it (2·N) but computes weight gradients only for the tuned part (2·N_tuned), so a
back-propagated token costs 4·N + 2·N_tuned: 6·N for full tuning, 4·N + 2·N_LoRA for LoRA
(N includes the adapters' own matmuls), 4·N for a soft prompt (an embedding: no matmul).
:class:`FlopCosts` holds the two per-token costs; the Policy computes them from its model.

In a data-parallel run each rank's meter charges its own share of the work, and the runner
adds the other ranks' shares after every step (:class:`trice_rl.distributed.MeterSync`): a
budget counts the whole world's samples, tokens and FLOPs, identically on every rank.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields


@dataclass
class Budget:
    """Limits of a run; ``None`` means unlimited.  At least one limit must be set."""

    samples: int | None = None
    tokens_generated: int | None = None
    tokens_scored: int | None = None
    optimizer_steps: int | None = None
    seconds: float | None = None
    flops: float | None = None

    def __post_init__(self) -> None:
        limits = asdict(self)
        if all(value is None for value in limits.values()):
            raise ValueError("a Budget needs at least one limit (samples, tokens_generated, tokens_scored, optimizer_steps, seconds or flops)")
        for name, value in limits.items():
            if value is not None and value <= 0:
                raise ValueError(f"budget {name} must be positive, got {value}")


@dataclass
class BudgetUsage:
    """A snapshot of what a run has used."""

    samples: int = 0
    tokens_generated: int = 0
    tokens_scored: int = 0
    optimizer_steps: int = 0
    seconds: float = 0.0
    flops: float = 0.0


# Limits that only drawing samples spends: a step that draws none (STaR's fine-tuning on
# samples already paid for) may still run once they are spent.
SAMPLE_LIMITS = frozenset({"samples", "tokens_generated"})


@dataclass(frozen=True)
class FlopCosts:
    """Model FLOPs per token: ``forward`` for a token that only goes forward (2·N),
    ``backprop`` for one that is back-propagated (4·N + 2·N_tuned); see the module doc."""

    forward: float
    backprop: float

    @classmethod
    def from_counts(cls, forward_parameters: int, tuned_parameters: int) -> "FlopCosts":
        return cls(forward=2.0 * forward_parameters, backprop=4.0 * forward_parameters + 2.0 * tuned_parameters)


class BudgetMeter:
    """Counts what a run spends.

    ``seconds`` is wall time since the meter was created (or restored), minus the time spent
    inside :meth:`paused` blocks, so evaluation does not eat the training budget.
    """

    def __init__(self) -> None:
        self.samples = 0
        self.tokens_generated = 0
        self.tokens_scored = 0
        self.optimizer_steps = 0
        self.flops = 0.0
        self._seconds_before = 0.0
        self._started = time.perf_counter()
        self._paused_depth = 0
        self._paused_since = 0.0
        self._paused_total = 0.0

    # --------------------------------------------------------------- charging
    @property
    def charging(self) -> bool:
        return self._paused_depth == 0

    def add_samples(self, samples: int, tokens_generated: int) -> None:
        if self.charging:
            self.samples += int(samples)
            self.tokens_generated += int(tokens_generated)

    def add_scored(self, tokens: int) -> None:
        if self.charging:
            self.tokens_scored += int(tokens)

    def add_optimizer_step(self) -> None:
        if self.charging:
            self.optimizer_steps += 1

    def add_flops(self, flops: float) -> None:
        if self.charging:
            self.flops += float(flops)

    def start_clock(self) -> None:
        """Count seconds from now (a run's own time: not a model build before it)."""
        self._seconds_before = 0.0
        self._started = time.perf_counter()
        self._paused_total = 0.0
        self._paused_since = self._started

    @contextmanager
    def paused(self):
        """Nothing done inside the block is charged (used for evaluation)."""
        if self._paused_depth == 0:
            self._paused_since = time.perf_counter()
        self._paused_depth += 1
        try:
            yield self
        finally:
            self._paused_depth -= 1
            if self._paused_depth == 0:
                self._paused_total += time.perf_counter() - self._paused_since

    # ---------------------------------------------------------------- reading
    @property
    def seconds(self) -> float:
        now = time.perf_counter()
        paused = self._paused_total + (now - self._paused_since if self._paused_depth else 0.0)
        return self._seconds_before + (now - self._started) - paused

    def usage(self) -> BudgetUsage:
        return BudgetUsage(self.samples, self.tokens_generated, self.tokens_scored, self.optimizer_steps, self.seconds, self.flops)

    def spent_limits(self, budget: Budget) -> set[str]:
        """The names of the budget's limits that are used up."""
        usage = asdict(self.usage())
        return {name for name, limit in asdict(budget).items() if limit is not None and usage[name] >= limit}

    def exhausted(self, budget: Budget) -> bool:
        return bool(self.spent_limits(budget))

    def fraction_used(self, budget: Budget) -> float:
        """The largest fraction of any limit used so far (for progress bars)."""
        usage = asdict(self.usage())
        return max(usage[name] / limit for name, limit in asdict(budget).items() if limit is not None)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return asdict(self.usage())

    def load_state_dict(self, state: dict) -> None:
        known = {f.name for f in fields(BudgetUsage)}
        unknown = set(state) - known
        if unknown:
            raise ValueError(f"unknown budget meter fields {sorted(unknown)}")
        self.samples = int(state.get("samples", 0))
        self.tokens_generated = int(state.get("tokens_generated", 0))
        self.tokens_scored = int(state.get("tokens_scored", 0))
        self.optimizer_steps = int(state.get("optimizer_steps", 0))
        self.flops = float(state.get("flops", 0.0))
        self.start_clock()
        self._seconds_before = float(state.get("seconds", 0.0))
