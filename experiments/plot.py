"""Redraw learning curves from one or more run folders written by compare.py.

    python experiments/plot.py runs/a runs/b --x tokens_generated --out curves.png
"""

from __future__ import annotations

try:
    import trice_rl  # noqa: F401  (the installed package)
except ModuleNotFoundError:
    raise SystemExit("plot.py: the trice_rl package is not installed; run `pip install -e .` in the repository first") from None

import argparse
from pathlib import Path

from trice_rl.plotting import BUDGET_COLUMNS, load_runs, plot_curves


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="run folders holding <algo>-seed<k>.csv files")
    parser.add_argument("--x", default="samples_drawn", choices=BUDGET_COLUMNS, help="budget column on the x-axis")
    parser.add_argument("--y", default="eval_acc_greedy", help="column on the y-axis (e.g. train_proposal_acc, grad_variance)")
    parser.add_argument("--out", help="PNG to write (default: curves-<x>.png in the first folder)")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.folders)
    except FileNotFoundError as error:
        parser.error(str(error))
    out = Path(args.out) if args.out else Path(args.folders[0]) / f"curves-{args.x}.png"
    try:
        plot_curves(runs, out, x=args.x, y=args.y, title=args.title)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
