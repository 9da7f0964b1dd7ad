"""Learning curves and summary tables from run CSVs (one CSV per algorithm and seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

BUDGET_COLUMNS = ("samples_drawn", "tokens_generated", "tokens_scored", "grad_steps", "wall_seconds", "train_flops")
# Methods that train on rationales they sample: the FLOPs-matched point is where all of
# these arrived (cot-sft and prompt-tuning decode nothing and would pin it near zero).
SAMPLING_METHODS = ("trice", "trice-nocv", "trice-k", "star", "rft", "rest-em", "grpo")


def load_runs(folders: Iterable[str | Path]) -> pd.DataFrame:
    """All per-run CSVs of the given run folders, concatenated (``summary.csv`` excluded)."""
    frames = []
    for folder in folders:
        folder = Path(folder)
        files = sorted(p for p in folder.glob("*-seed*.csv"))
        if not files:
            raise FileNotFoundError(f"{folder}: no run CSVs (<algo>-seed<k>.csv) found")
        for path in files:
            frame = pd.read_csv(path)
            frame["run_folder"] = str(folder)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def matched_accuracy(runs: pd.DataFrame, x: str = "train_flops", y: str = "eval_acc_greedy") -> pd.DataFrame:
    """Each run's ``y`` at the matched ``x``: per seed, the largest ``x`` that every sampling
    method reached (:data:`SAMPLING_METHODS`; all methods if none is present), read off the
    curve as the last evaluation at or before it (no new run, no interpolation).  Returns
    one row per (algo, seed) with ``matched_<x>`` and ``<y>_at_matched_<x>``."""
    finals = runs.groupby(["algo", "seed"])[x].max().reset_index()
    pacing = finals[finals["algo"].isin(SAMPLING_METHODS)]
    matched = (pacing if not pacing.empty else finals).groupby("seed")[x].min()
    rows = []
    for (algo, seed), group in runs.dropna(subset=[y]).groupby(["algo", "seed"]):
        reached = group[group[x] <= matched[seed]]
        rows.append({"algo": algo, "seed": seed, f"matched_{x}": matched[seed], f"{y}_at_matched_{x}": reached[y].iloc[-1] if len(reached) else np.nan})
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Final greedy / majority-of-k accuracy per algorithm, and greedy accuracy at equal
    training FLOPs (:func:`matched_accuracy`): mean and std over seeds."""
    finals = runs.groupby(["algo", "seed"]).tail(1)  # file order: the final evaluation row
    if "train_flops" in runs and runs["train_flops"].notna().all():
        finals = finals.merge(matched_accuracy(runs), on=["algo", "seed"])
    metrics = [
        c
        for c in ("eval_acc_greedy", "eval_acc_greedy_at_matched_train_flops", "eval_acc_majority", "samples_drawn", "train_flops", "wall_seconds")
        if c in finals
    ]
    table = finals.groupby("algo")[metrics].agg(["mean", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table["seeds"] = finals.groupby("algo")["seed"].nunique()
    return table.reset_index()


def plot_curves(
    runs: pd.DataFrame, path: str | Path, x: str = "samples_drawn", y: str = "eval_acc_greedy", title: str | None = None, log_y: bool = False
) -> Path:
    """One line per algorithm (mean over seeds on a common grid) with a min–max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in runs or y not in runs:
        raise ValueError(f"columns {x!r} and {y!r} must both be in the runs; available: {', '.join(runs.columns)}")
    points = runs.dropna(subset=[y])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for algo, group in points.groupby("algo", sort=True):
        grid = np.unique(group[x].to_numpy(dtype=float))
        curves = [
            np.interp(grid, seed_rows[x].to_numpy(dtype=float), seed_rows[y].to_numpy(dtype=float))
            for _, seed_rows in group.sort_values(x).groupby("seed")
        ]
        curves = np.array(curves)
        line = ax.plot(grid, curves.mean(0), label=f"{algo} ({len(curves)} seed{'s' * (len(curves) > 1)})")[0]
        if len(curves) > 1:
            ax.fill_between(grid, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    if log_y and (points[y] > 0).all():
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
