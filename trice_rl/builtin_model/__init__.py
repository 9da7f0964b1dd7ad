"""The embedded default model: a small Llama with a character tokenizer, pre-trained here.

No weights can be downloaded on an offline machine, so the project builds its own stand-in
for "a pretrained LLM prompted to think step by step".  It is pre-trained on generated text
for one task family, written in the project's prompt templates:

* chain-of-thought texts (``cot prompt + rationale + EOS``) whose rationales contain
  *systematic* mistakes: a fixed kind of step (arithmetic: a step that wraps around the
  modulus) is written wrong in a fixed fraction of its occurrences.  The model learns that
  mixture, so greedy decoding repeats the mistake and sampling gets such steps right only
  sometimes: accuracy starts low but clearly above zero, and falls with the number of
  risky steps, which spreads per-example difficulty from near 1 to near 0;
* hinted texts (the answer shown in the prompt, as TRICE's memory initialisation and
  STaR's rationalisation use) with fewer mistakes, so hinted sampling is clearly better;
* direct texts (``The answer is y.``), so direct answering is well-formed but, without the
  steps, hard;
* a few of any format preceded by one to three exemplars of the same format, so few-shot
  prompts and prompt tuning see familiar context.

The model is deterministic for a seed, cached under ``$TRICE_RL_CACHE`` (default
``~/.cache/trice_rl``) in ``builtin/<family>-<size>-<config hash>/``, written atomically,
and rebuilt (printing its accuracies) by::

    python -m trice_rl.builtin_model --family arithmetic [--size default|tiny] [--force]
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import math
import os
import shutil
import string
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from envs.arithmetic import ArithmeticConfig, generate_chain, true_step_result, wraps, write_rationale
from envs.base import FEW_SHOT_SEPARATOR, Task, question_key
from envs.download import cache_root
from envs.procedural_bbh import (
    boolean_rationale,
    boolean_reductions,
    draw_boolean_expression,
    draw_multistep,
    multistep_question,
    multistep_rationale,
    true_arithmetic,
    true_boolean,
)
from trice_rl.options import option

FAMILIES = ("arithmetic", "boolean_expressions", "multistep_arithmetic_two")
SIZES = ("default", "tiny")
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
# Every printable ASCII character except the rare vertical whitespace: covers all tasks.
CHARACTERS = "".join(c for c in string.printable if c not in "\x0b\x0c\r")
CONFIG_FILE = "builtin_config.json"
_EAGER_ATTENTION_MAX_WIDTH = 400
# The arithmetic corpus spans a little more than the task's default 2..7 steps, so that
# shorter and longer chains (difficulty overrides) are not out of distribution.
PRETRAIN_ARITHMETIC = ArithmeticConfig(min_steps=1, max_steps=8)


# BuiltinConfig fields that say how a build runs, not what it builds (not in the cache key).
EXECUTION_FIELDS = ("threads",)


@dataclass(frozen=True)
class BuiltinConfig:
    """Everything a build depends on; its hash names the cache folder."""

    family: str = option("arithmetic", "which task family the corpus teaches (FAMILIES)")
    size: str = option("default", "the preset this config came from (default, tiny)")
    seed: int = option(0, "seed of the initial weights, the corpus and the batch order")
    hidden_size: int = option(128, "Llama width")
    num_layers: int = option(3, "Llama layers")
    num_heads: int = option(4, "attention heads (as many key/value heads)")
    intermediate_size: int = option(512, "MLP width")
    max_position_embeddings: int = option(2048, "longest position RoPE is set up for")
    initializer_range: float = option(0.1, "std of the initial weights (docs/builtin_models.md: why 5x the default)")
    train_steps: int = option(1400, "optimizer steps (docs/builtin_models.md: why this many)")
    batch_size: int = option(32, "documents per optimizer step")
    learning_rate: float = option(3e-3, "peak learning rate")
    warmup_steps: int = option(100, "linear warm-up steps")
    learning_rate_floor: float = option(0.1, "the cosine decay ends at this fraction of the peak rate")
    weight_decay: float = option(0.01, "AdamW weight decay")
    adam_betas: tuple[float, float] = option((0.9, 0.98), "AdamW betas")
    max_grad_norm: float = option(1.0, "gradient clipping")
    length_sort_batches: int = option(50, "documents are sorted by length within blocks of this many batches (little padding)")
    precision: str = option("fp32", "bf16 (autocast: twice as fast where the CPU has native bf16) or fp32; presets pick what the machine supports")
    threads: int = option(2, "torch threads, at most the free cores; how to run, not what to build (not in the cache key)")
    cot_mistake_rate: float = option(0.6, "chance that a CoT rationale writes a step of the systematic kind (module docstring) wrong")
    hinted_mistake_rate: float = option(0.2, "the same chance in hinted rationales")
    hinted_fraction: float = option(0.25, "share of corpus documents in the hinted format")
    direct_fraction: float = option(0.1, "share of corpus documents in the direct-answer format")
    few_shot_fraction: float = option(0.05, "share of corpus documents preceded by worked examples")
    max_few_shot: int = option(3, "most worked examples before a document")
    corpus_version: int = option(2, "2: every held-out question (validation, test) is excluded from the corpus")

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; valid: {', '.join(FAMILIES)}")
        if self.hinted_fraction + self.direct_fraction > 1:
            raise ValueError("hinted_fraction + direct_fraction must be at most 1")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {self.precision!r}")
        if self.train_steps < 1:
            raise ValueError(f"train_steps must be at least 1, got {self.train_steps}")

    @classmethod
    def preset(cls, family: str = "arithmetic", size: str = "default", seed: int = 0) -> "BuiltinConfig":
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; valid: {', '.join(SIZES)}")
        precision = "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
        config = replace(cls(family=family, size=size, seed=seed, precision=precision), **_FAMILY_PRESETS.get(family, {}))
        return replace(config, **_TINY) if size == "tiny" else config

    def folder_name(self) -> str:
        recipe = {name: value for name, value in asdict(self).items() if name not in EXECUTION_FIELDS}
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.family}-{self.size}-{digest}"


# BBH texts are half as long again as arithmetic ones: fewer (quadratic-cost) few-shot rows
# keep their builds shorter.  multistep_arithmetic_two needs signed two- and three-digit
# arithmetic, which the default shape does not learn: it gets 6 layers (with a narrower MLP,
# as cheap per token as 4) and more steps.  The measurements behind these choices:
# docs/builtin_models.md.
_FAMILY_PRESETS: dict[str, dict] = {
    "boolean_expressions": dict(few_shot_fraction=0.02),
    "multistep_arithmetic_two": dict(few_shot_fraction=0.02, num_layers=6, intermediate_size=256, train_steps=2000),
}
# Seconds to build, accuracy irrelevant: for tests.
_TINY = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, train_steps=8, batch_size=8, warmup_steps=2, threads=1)


# ----------------------------------------------------------------------- the cache
# Written last into a finished build: every file's size and sha256.  A folder without it is
# an unfinished (or pre-marker) build; sizes catch truncated or emptied files on every use,
# and the weights, the one large file, are also checked against their sha256.
MARKER_FILE = "build_complete.json"
WEIGHTS_FILE = "model.safetensors"


def builtin_model_path(
    family: str = "arithmetic", size: str = "default", seed: int = 0, rebuild: bool = False, threads: int | None = None
) -> Path:
    """The folder of the built-in model (an ordinary HF model folder), built if missing and
    rebuilt if its cache entry is incomplete or damaged (:func:`cache_problem`); a build runs
    on ``threads`` torch threads (default: the preset's)."""
    config = BuiltinConfig.preset(family, size, seed)
    if threads is not None:
        config = replace(config, threads=threads)
    folder = cache_root() / "builtin" / config.folder_name()
    problem = cache_problem(folder)
    if problem is None and not rebuild:
        return folder
    if problem is not None and os.path.lexists(folder):
        print(f"the cached built-in model {folder} is unusable ({problem}): rebuilding it", file=sys.stderr)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the destination and rename into place: a crash leaves only a temp folder.
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build(config, staging)
        write_marker(staging)
        _install(staging, folder, force=rebuild)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _install(staging: Path, folder: Path, force: bool) -> None:
    """Rename a finished build to ``folder``, first moving aside whatever is there if it is
    damaged (or ``force``); a good copy that a concurrent build installed meanwhile is kept."""
    if os.path.lexists(folder) and (force or cache_problem(folder) is not None):
        retired = Path(tempfile.mkdtemp(prefix=f".{folder.name}-old-", dir=folder.parent))
        with contextlib.suppress(FileNotFoundError):  # a concurrent build moved it first
            folder.rename(retired / "model")
        shutil.rmtree(retired)
    try:
        staging.rename(folder)
    except OSError:
        if cache_problem(folder) is not None:  # not a concurrent build that finished first
            raise


def sha256_of(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def write_marker(folder: Path) -> None:
    """Mark a build finished: the size and sha256 of every file in ``folder``, written last."""
    files = {
        path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
    (folder / MARKER_FILE).write_text(json.dumps({"files": files}, indent=2) + "\n")


def cache_problem(folder: Path) -> str | None:
    """Why the cache entry ``folder`` cannot be used, or ``None`` when it can: the marker is
    missing or unreadable, or a file it lists is missing, has another size or (the weights)
    another sha256."""
    if not folder.is_dir():
        return "missing" if not os.path.lexists(folder) else "not a folder"
    try:
        listed = json.loads((folder / MARKER_FILE).read_text())["files"]
        expected = {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in listed.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"no readable {MARKER_FILE}: an unfinished build, or one from before markers"
    if WEIGHTS_FILE not in expected:
        return f"{MARKER_FILE} lists no {WEIGHTS_FILE}"
    for name, (size, digest) in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, expected {size}"
        if name == WEIGHTS_FILE and sha256_of(path) != digest:
            return f"{name} does not match its sha256"
    return None


# ----------------------------------------------------------------- shipped models
# The default-size model of each family ships with the package (built once by ``--ship``),
# so every user starts from the same weights; ``manifest.json`` holds each file's sha256,
# the build command and config, and accuracies measured on the shipped weights.
SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "models"
SHIPPED_MANIFEST = SHIPPED_MODELS / "manifest.json"
# Greedy accuracy on the first test items of this many, recorded at shipping and checked
# exactly by the tests (the weights are fixed).
SHIPPED_SLICE = 40
VARIANTS = ("default", "tiny", "cache")


class ShippedModelError(RuntimeError):
    """A shipped built-in model does not match its manifest."""


def shipped_manifest() -> dict:
    return json.loads(SHIPPED_MANIFEST.read_text()) if SHIPPED_MANIFEST.is_file() else {}


def shipped_model_path(family: str) -> Path | None:
    """The shipped folder of ``family``'s default model, its files checked against the
    manifest; ``None`` where the package ships none for it."""
    entry = shipped_manifest().get(family)
    if entry is None:
        return None
    folder = SHIPPED_MODELS / family
    for name, digest in entry["files"].items():
        path = folder / name
        actual = sha256_of(path) if path.is_file() else "missing"
        if actual != digest:
            raise ShippedModelError(
                f"the shipped built-in model file {path} is {'missing' if actual == 'missing' else f'damaged (sha256 {actual[:12]}…, the manifest says {digest[:12]}…)'}: "
                f"reinstall trice_rl, or rebuild it with `python -m trice_rl.builtin_model --family {family}` and use --model builtin:{family}:cache"
            )
    return folder


def resolve_builtin(name: str) -> Path:
    """``builtin[:<family>[:<variant>]]`` → a model folder.  Variants: ``default`` (the
    shipped model, or a cache build where none ships), ``tiny`` (a seconds-long cache build
    for tests), ``cache`` (the default model rebuilt from the recipe into the cache)."""
    _, family, variant = (name.split(":") + ["", ""])[:3]
    family, variant = family or "arithmetic", variant or "default"
    if family not in FAMILIES or variant not in VARIANTS:
        raise ValueError(f"unknown built-in model {name!r}: use builtin:<family>[:<variant>], families {', '.join(FAMILIES)}, variants {', '.join(VARIANTS)}")
    if variant == "default":
        shipped = shipped_model_path(family)
        if shipped is not None:
            return shipped
    return builtin_model_path(family, "tiny" if variant == "tiny" else "default")


def record_shipped(family: str, entry: dict) -> None:
    manifest = shipped_manifest() | {family: entry}
    SHIPPED_MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------- tokenizer
def build_tokenizer():
    """A character-level fast tokenizer: one token per character, BOS prepended to inputs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate((PAD, BOS, EOS, UNK, *CHARACTERS))}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,  # " ." and " )" are real text here
        model_max_length=BuiltinConfig.max_position_embeddings,
    )


# ------------------------------------------------------------------------- corpus
# A problem: (question, gold answer, write_rationale(mistake_rate) -> rationale text).
Problem = tuple[str, str, Callable[[float], str]]


def _arithmetic_problem(rng: np.random.Generator, index: int) -> Problem:
    chain = generate_chain(PRETRAIN_ARITHMETIC, "train", index, stream="pretrain")

    def rationale(mistake_rate: float) -> str:
        def step_result(left: int, op: str, right: int, modulus: int) -> int:
            """Wrapping around off by one ("8 + 3 = 11 = 2", "1 - 5 = -4 = 5"): the
            systematic mistake."""
            result = true_step_result(left, op, right, modulus)
            if wraps(left, op, right, modulus) and rng.random() < mistake_rate:
                result = (result + (-1 if op == "-" else 1)) % modulus
            return result

        return write_rationale(chain.steps(step_result))

    return chain.question(), str(chain.answer()), rationale


def _boolean_problem(rng: np.random.Generator, index: int) -> Problem:
    expression = draw_boolean_expression(rng)

    def rationale(mistake_rate: float) -> str:
        def evaluate(op: str, operands: tuple[bool, ...]) -> bool:
            """Dropping a negation: the systematic mistake."""
            if op == "not" and rng.random() < mistake_rate:
                return operands[0]
            return true_boolean(op, operands)

        return boolean_rationale(boolean_reductions(expression, evaluate))

    return f"{expression} is", boolean_reductions(expression)[-1], rationale


def _multistep_problem(rng: np.random.Generator, index: int) -> Problem:
    left, middle, right = draw_multistep(rng)

    def rationale(mistake_rate: float) -> str:
        def evaluate(op: str, a: int, b: int) -> int:
            """Sign slips, the systematic mistakes: "a - -b" read as "a - b", and a product of
            two negatives written negative."""
            value = true_arithmetic(op, a, b)
            if op == "-" and b < 0 and rng.random() < mistake_rate:
                return a + b
            if op == "*" and a < 0 and b < 0 and rng.random() < mistake_rate:
                return -value
            return value

        return multistep_rationale(left, middle, right, evaluate)[0]

    return multistep_question(left, middle, right), str(multistep_rationale(left, middle, right)[1]), rationale


_PROBLEMS: dict[str, Callable[[np.random.Generator, int], Problem]] = {
    "arithmetic": _arithmetic_problem,
    "boolean_expressions": _boolean_problem,
    "multistep_arithmetic_two": _multistep_problem,
}


@functools.lru_cache(maxsize=None)
def held_out_questions(family: str) -> frozenset[str]:
    """The :func:`~envs.base.question_key` of every question the family's task evaluates or
    validates on (its default configuration's validation and test splits; for the BBH
    families the 250 real items and the procedural validation split).  No pre-training
    document may contain one, or held-out accuracy would partly measure memorisation."""
    task = family_task(family)
    return frozenset(question_key(example.question) for split in ("validation", "test") for example in task.examples(split))


def corpus_documents(config: BuiltinConfig, num_documents: int) -> Iterator[list[tuple[str, bool]]]:
    """Training documents as (text, trained-on) segments: prompts are context only.  Every
    family's corpus goes through here, and a problem whose question is held out
    (:func:`held_out_questions`) is redrawn."""
    rng = np.random.default_rng([config.seed, FAMILIES.index(config.family)])
    templates = Task()
    held_out = held_out_questions(config.family)
    problem_index = 0

    def draw() -> Problem:
        nonlocal problem_index
        while True:
            problem = _PROBLEMS[config.family](rng, problem_index)
            problem_index += 1
            if question_key(problem[0]) not in held_out:
                return problem

    cot_fraction = 1 - config.hinted_fraction - config.direct_fraction
    for _ in range(num_documents):
        kind = rng.choice(["cot", "hinted", "direct"], p=[cot_fraction, config.hinted_fraction, config.direct_fraction])
        num_shots = int(rng.integers(1, config.max_few_shot + 1)) if rng.random() < config.few_shot_fraction else 0
        segments: list[tuple[str, bool]] = []
        for shot in range(num_shots + 1):
            question, answer, rationale = draw()
            if kind == "cot":
                segments += [(templates.cot_prompt(question), False), (rationale(config.cot_mistake_rate), True)]
            elif kind == "hinted":
                prompt = templates.hinted_prompt(question, answer)
                segments += [(prompt, False), (rationale(config.hinted_mistake_rate), True)]
            else:
                segments += [(templates.direct_prompt(question), False), (templates.direct_completion(answer), True)]
            if shot < num_shots:
                segments.append((FEW_SHOT_SEPARATOR, False))
        yield segments


def _encode(segments: list[tuple[str, bool]], vocab: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (BOS + characters + EOS) and which of them are prediction targets.  One
    byte per id (the character vocabulary has 101 tokens; a larger id raises): a build holds
    its whole encoded corpus until the last batch."""
    ids, targets = [vocab[BOS]], [False]
    for text, trained in segments:
        ids += [vocab.get(c, vocab[UNK]) for c in text]
        targets += [trained] * len(text)
    return np.array(ids + [vocab[EOS]], dtype=np.uint8), np.array(targets + [True])


def _length_sorted_groups(config: BuiltinConfig, vocab: dict[str, int]) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """The encoded corpus cut into batch-sized groups of similar lengths (little padding):
    documents sorted by length within blocks of ``length_sort_batches`` batches."""
    documents = [_encode(d, vocab) for d in corpus_documents(config, config.train_steps * config.batch_size)]
    chunk = config.length_sort_batches * config.batch_size
    groups = []
    for start in range(0, len(documents), chunk):
        block = sorted(documents[start : start + chunk], key=lambda d: len(d[0]))
        groups += [block[i : i + config.batch_size] for i in range(0, len(block), config.batch_size)]
    return groups


def _padded(group: list[tuple[np.ndarray, np.ndarray]], vocab: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One (input_ids, attention_mask, labels) batch, right-padded to its longest document."""
    width = max(len(ids) for ids, _ in group)
    input_ids = torch.full((len(group), width), vocab[PAD], dtype=torch.long)
    labels = torch.full((len(group), width), -100, dtype=torch.long)
    mask = torch.zeros((len(group), width), dtype=torch.long)
    for row, (ids, targets) in enumerate(group):
        row_ids = torch.from_numpy(ids).long()
        input_ids[row, : len(ids)] = row_ids
        labels[row, : len(ids)] = torch.where(torch.from_numpy(targets), row_ids, -100)
        mask[row, : len(ids)] = 1
    return input_ids, mask, labels


def _batches(config: BuiltinConfig, vocab: dict[str, int]) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The ``train_steps`` training batches in a seeded random order, each padded only when
    the training loop takes it: all of the default build's padded batches at once held
    about 280 MB, its encoded corpus holds about 35 MB."""
    groups = _length_sorted_groups(config, vocab)
    order = np.random.default_rng([config.seed, len(FAMILIES)]).permutation(len(groups))
    return (_padded(groups[i], vocab) for i in order)


# -------------------------------------------------------------------------- build
@contextlib.contextmanager
def _torch_threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# Batches of ever-changing shapes leave glibc's allocator holding the memory they freed:
# without handing it back, a default build's resident memory grew step after step to 5.6 GB
# (docs/builtin_models.md).
RELEASE_MEMORY_EVERY = 5  # optimizer steps


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to release
        return None


def release_freed_memory() -> None:
    """Return the memory the C allocator keeps after frees to the system (glibc only)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def build(config: BuiltinConfig, folder: Path) -> None:
    """Pre-train the model of ``config`` and save it (weights, tokenizer, config) to ``folder``."""
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    started = time.perf_counter()
    tokenizer = build_tokenizer()
    vocab = tokenizer.get_vocab()
    with _torch_threads(config.threads):
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(vocab),
                hidden_size=config.hidden_size,
                intermediate_size=config.intermediate_size,
                num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads,
                num_key_value_heads=config.num_heads,
                max_position_embeddings=config.max_position_embeddings,
                initializer_range=config.initializer_range,
                tie_word_embeddings=True,
                pad_token_id=vocab[PAD],
                bos_token_id=vocab[BOS],
                eos_token_id=vocab[EOS],
                attn_implementation="eager",
            )
        )
        batches = _batches(config, vocab)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, betas=config.adam_betas)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _learning_rate_factor(step, config))
        model.train()
        progress = tqdm(batches, total=config.train_steps, desc=f"building builtin model {config.folder_name()}", unit="step", mininterval=2)
        for input_ids, mask, labels in progress:
            # Eager attention is faster on CPU for short rows, sdpa for the long few-shot ones.
            attention = "sdpa" if input_ids.shape[1] > _EAGER_ATTENTION_MAX_WIDTH else "eager"
            if model.config._attn_implementation != attention:
                model.set_attn_implementation(attention)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            final_loss = loss.item()
            progress.set_postfix(loss=f"{final_loss:.3f}", refresh=False)
            if progress.n % RELEASE_MEMORY_EVERY == 0:
                release_freed_memory()
        model.eval()
    model.generation_config = GenerationConfig(bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[PAD])
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    record = {
        "config": asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "build_seconds": round(time.perf_counter() - started, 1),
        "final_loss": round(final_loss, 4),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")


def _learning_rate_factor(step: int, config: BuiltinConfig) -> float:
    """Linear warm-up, then cosine decay to ``learning_rate_floor`` of the peak."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.train_steps - config.warmup_steps)
    floor = config.learning_rate_floor
    return floor + (1 - floor) / 2 * (1 + math.cos(math.pi * min(1.0, progress)))


# The attention implementation that plain ``model.generate`` gets on a CPU in the benchmarks:
# it decodes one query against a long character-level cache, where matmul-softmax-matmul beats
# the fused SDPA kernel (docs/builtin_models.md).  The Policy keeps transformers' default
# (SDPA): it decodes through trice_rl.decoding, and trains and scores through the model's
# forward, where SDPA is the faster one.
GENERATE_ATTENTION_ON_CPU = "eager"


def family_task(family: str) -> Task:
    """The task a family's model is meant for: the arithmetic task, or the BBH task trained
    on procedural questions and tested on the 250 real items (needs the data folder)."""
    from envs.arithmetic import ArithmeticTask
    from envs import make_task

    if family == "arithmetic":
        return ArithmeticTask()
    return make_task(f"trice_rl/BBH-{family}-v0", train_source="procedural")


def is_builtin(name_or_path: str) -> bool:
    """Whether a model name means the project's embedded model."""
    return name_or_path == "builtin" or name_or_path.startswith("builtin:")


def resolve_model_path(name_or_path: str) -> str:
    """``builtin`` / ``builtin:<family>[:<size>]`` → the cached built-in model folder (built
    on first use); an existing local folder as is; anything else is treated as a hub id."""
    if is_builtin(name_or_path):
        return str(resolve_builtin(name_or_path))
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.sep in name_or_path and not os.path.exists(name_or_path) and name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model folder {name_or_path!r} does not exist; give a local folder, a hub id or 'builtin'")
    return name_or_path
