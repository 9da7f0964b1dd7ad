"""One file per training algorithm; ``get_algorithm(name)`` maps a command-line name to its
class (imported lazily, so that using one algorithm never imports the others)."""

from importlib import import_module

_ALGORITHMS = {
    "trice": ("algorithms.trice", "Trice"),
    "trice-nocv": ("algorithms.trice", "TriceNoCV"),
    "trice-k": ("algorithms.trice", "TriceK"),
    "star": ("algorithms.star", "Star"),
    "rest-em": ("algorithms.star", "RestEM"),
    "rft": ("algorithms.rft", "RejectionFineTuning"),
    "prompt-tuning": ("algorithms.prompt_tuning", "PromptTuning"),
    "cot-sft": ("algorithms.cot_sft", "CotSFT"),
    "grpo": ("algorithms.grpo", "GRPO"),
}
ALGORITHM_NAMES = tuple(_ALGORITHMS)


def get_algorithm(name: str):
    if name not in _ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; valid: {', '.join(ALGORITHM_NAMES)}")
    module, attribute = _ALGORITHMS[name]
    return getattr(import_module(module), attribute)
