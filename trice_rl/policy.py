"""The one Policy every algorithm uses: a Hugging Face causal LM, its tokenizer and the
parameters being tuned.

Sampling and greedy decoding live in :mod:`trice_rl.decoding` (exact ancestral samples
and their log-probabilities, a lean forward for Llama models).  The soft prompt of
``tune="prompt"`` is prepended by this class, not by peft, for exact control of positions
and masks; peft still owns the tunable parameters (initialisation, ``save_pretrained``
format).

Every call is charged to a :class:`~trice_rl.budget.BudgetMeter` (sampling, scoring, optimizer
steps, and teacher-forced targets through :meth:`Policy.charge_targets`): the algorithms never
charge the meter themselves.

Options for a model that fills a GPU (``docs/gpu.md``): ``gradient_checkpointing``,
``max_tokens_per_batch`` (micro-batches of scoring and training), ``master_weights`` (fp32
copies of low-precision trainable weights for the optimizer); LoRA on a ``bfloat16`` base
keeps its adapters in float32 (peft's ``autocast_adapter_dtype``), and on CUDA the rows
sampled at once are as many as free memory holds (:meth:`Policy.sampling_batch_size`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from trice_rl.budget import BudgetMeter, FlopCosts
from trice_rl.builtin_model import resolve_model_path
from trice_rl.decoding import Samples, decode

TUNE_MODES = ("full", "lora", "prompt")
DEFAULT_SOFT_PROMPT_TEXT = "Let's think step by step about the question and then give the answer."
_POLICY_FILE = "trice_rl_policy.json"
# The share of free CUDA memory that one sampling batch may fill.
SAMPLING_MEMORY_SHARE = 0.9

Completion = str | Sequence[int]


class Policy:
    """A causal LM with tunable parameters, metered sampling and differentiable scoring.

    Arguments:
        model, tokenizer: any Hugging Face causal LM and its tokenizer.
        tune: ``"full"`` (all weights), ``"lora"`` (peft LoRA adapters) or ``"prompt"``
            (peft prompt tuning: a soft prompt initialised from the embedding of
            ``soft_prompt_text``, as in the TRICE paper; the LM is frozen).
        meter: the BudgetMeter to charge (a new one by default).
        seed: seeds the policy's own sampling generator.
        device, dtype: where and in what precision the model runs (CPU, float32 by default).
            LoRA adapters and a soft prompt stay float32 on a bfloat16 / float16 base.
        lora_rank, lora_alpha, lora_target_modules: LoRA settings.
        max_batch_size: rows per forward when scoring, and when sampling on a CPU (on CUDA,
            at most this many: see :meth:`sampling_batch_size`).
        max_tokens_per_batch: where set, scoring and training run in micro-batches of at
            most this many padded positions (rows × longest prompt + completion), so that
            activations and logits fit in memory; results are those of one batch.
        gradient_checkpointing: recompute each layer's activations in the backward pass
            instead of keeping them (less memory; one more forward per trained token).
        master_weights: the optimizer updates float32 copies of trainable weights held in
            lower precision and rounds them back into the model after each step, so that
            updates smaller than a bfloat16 weight's rounding step are not lost.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        tune: str = "full",
        *,
        meter: BudgetMeter | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        soft_prompt_text: str = DEFAULT_SOFT_PROMPT_TEXT,
        lora_rank: int = 8,
        lora_alpha: int = 16,
        lora_target_modules: str | list[str] | None = None,
        max_batch_size: int = 256,
        max_tokens_per_batch: int | None = None,
        gradient_checkpointing: bool = False,
        master_weights: bool = False,
    ):
        if tune not in TUNE_MODES:
            raise ValueError(f"tune must be one of {', '.join(TUNE_MODES)}; got {tune!r}")
        self.device = torch.device(device or "cpu")
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.tokenizer = tokenizer
        self.tune = tune
        self.meter = meter or BudgetMeter()
        self.max_batch_size = max_batch_size
        self.max_tokens_per_batch = max_tokens_per_batch
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        model = model.to(device=self.device, dtype=dtype) if dtype is not None else model.to(self.device)
        if gradient_checkpointing:
            # Non-reentrant checkpoints pass gradients to adapters and a soft prompt on a
            # frozen base without inputs that require grad.
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.base_model = model
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_token_id is None:
            raise ValueError("the tokenizer has neither a pad token nor an EOS token")
        self.eos_token_ids = _eos_ids(model, tokenizer)
        self.soft_prompt: torch.nn.Parameter | None = None
        self.model = self._setup_tuning(model, tune, soft_prompt_text, lora_rank, lora_alpha, lora_target_modules)
        self.model.eval()  # no dropout: samples and scores must come from one distribution
        self._checkpointed_layers = [m for m in self.model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
        # id(parameter) -> its float32 master copy (the parameters held in lower precision).
        self._masters = {id(p): p.detach().to(torch.float32) for p in self.trainable_parameters() if p.dtype != torch.float32} if master_weights else {}

    # ------------------------------------------------------------------ set-up
    @classmethod
    def from_pretrained(cls, name_or_path: str, tune: str = "full", **kwargs) -> "Policy":
        """Load a local folder or a hub id; ``"builtin"`` (or ``"builtin:<family>"``) is the
        project's embedded model, built and cached on first use."""
        path = resolve_model_path(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = kwargs.get("dtype")
        load_kwargs = {"dtype": getattr(torch, dtype) if isinstance(dtype, str) else dtype} if dtype else {}
        model = AutoModelForCausalLM.from_pretrained(path, **load_kwargs)
        return cls(model, tokenizer, tune=tune, **kwargs)

    def _setup_tuning(self, model, tune, soft_prompt_text, lora_rank, lora_alpha, lora_target_modules):
        if tune == "full":
            for parameter in model.parameters():
                parameter.requires_grad_(True)
            return model
        from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

        if tune == "lora":
            # peft's autocast_adapter_dtype (on by default) keeps the adapters float32 on a
            # bfloat16 / float16 base: updates to them are not rounded away.
            config = LoraConfig(
                task_type=TaskType.CAUSAL_LM,
                r=lora_rank,
                lora_alpha=lora_alpha,
                lora_dropout=0.0,
                target_modules=lora_target_modules or "all-linear",
            )
            return get_peft_model(model, config)
        init_ids = self.tokenizer(soft_prompt_text, add_special_tokens=False).input_ids
        if not init_ids:
            raise ValueError("soft_prompt_text must tokenize to at least one token")
        config = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=len(init_ids),
            prompt_tuning_init=PromptTuningInit.RANDOM,
        )
        peft_model = get_peft_model(model, config)
        embedding = peft_model.prompt_encoder[peft_model.active_adapter].embedding
        with torch.no_grad():
            ids = torch.tensor(init_ids, device=self.device)
            embedding.weight.copy_(model.get_input_embeddings()(ids).to(embedding.weight.dtype))
        self.soft_prompt = embedding.weight
        self.soft_prompt_text = soft_prompt_text
        return peft_model

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [parameter for parameter in self.model.parameters() if parameter.requires_grad]

    def optimized_tensors(self) -> list[torch.Tensor]:
        """What the optimizer updates: each trainable parameter, or its float32 master copy
        (``master_weights``)."""
        return [self._masters.get(id(p), p) for p in self.trainable_parameters()]

    def num_trainable_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.trainable_parameters())

    @functools.cached_property
    def flop_costs(self) -> FlopCosts:
        """Model FLOPs per token (see ``trice_rl.budget``): N counts every parameter but the
        embeddings (input, output head, soft prompt), which cost a lookup, not a matmul.
        With ``gradient_checkpointing`` the hardware runs one more forward (2·N) per
        back-propagated token; it is not counted, so that a FLOPs budget buys the same
        training with or without it (the standard 6·N "model FLOPs")."""
        embeddings = [m for m in self.model.modules() if isinstance(m, torch.nn.Embedding)]
        embeddings.append(self.base_model.get_output_embeddings())
        skip = {id(p) for module in embeddings if module is not None for p in module.parameters()}
        counted = [p for p in self.model.parameters() if id(p) not in skip]
        return FlopCosts.from_counts(sum(p.numel() for p in counted), sum(p.numel() for p in counted if p.requires_grad))

    def charge_targets(self, token_ids: Sequence[Sequence[int]]) -> None:
        """Charge teacher-forced targets (gold rationales, direct answers) that stand in for
        samples: one sample each, their tokens as generated, so that budgets in samples or
        generated tokens end for the methods that train on them; their FLOPs are the
        training step's alone, since nothing is decoded."""
        self.meter.add_samples(len(token_ids), tokens_generated=sum(len(ids) for ids in token_ids))

    def charge_flops(self, sequences: int, positions: int, backprop: bool) -> None:
        """Charge the model FLOPs of ``positions`` tokens in ``sequences`` rows (each row also
        runs through the soft prompt's virtual tokens, if any)."""
        costs = self.flop_costs
        tokens = positions + sequences * self._num_virtual_tokens
        self.meter.add_flops((costs.backprop if backprop else costs.forward) * tokens)

    # ------------------------------------------------------------ the forward
    @contextlib.contextmanager
    def _checkpointing(self):
        """Hugging Face layers recompute activations only in training mode, and the policy
        runs in eval mode (no dropout); so for a forward with gradients only the
        checkpointed layers themselves are marked as training: their submodules, whose
        dropout reads their own flags, stay in eval mode."""
        layers = self._checkpointed_layers if torch.is_grad_enabled() else []
        for layer in layers:
            layer.training = True
        try:
            yield
        finally:
            for layer in layers:
                layer.training = False

    @property
    def _lm(self):
        """The module called for logits: peft's LoRA wrapper passes position ids through;
        for prompt tuning the soft prompt is prepended here, so the raw model is called."""
        if self.tune == "prompt":
            return self.model.get_base_model()
        return self.model

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache=None, logits_to_keep: int = 0):
        """Logits for ``input_ids``; on the first call (no cache yet) the soft prompt, if any,
        is prepended and ``attention_mask`` must already include its columns."""
        embeds = self._lm.get_input_embeddings()(input_ids)
        if self.soft_prompt is not None and (cache is None or cache.get_seq_length() == 0):
            prompt = self.soft_prompt.to(embeds.dtype).unsqueeze(0).expand(embeds.shape[0], -1, -1)
            embeds = torch.cat([prompt, embeds], dim=1)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -embeds.shape[1]:]
        out = self._lm(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=logits_to_keep,
        )
        return out.logits

    @property
    def _num_virtual_tokens(self) -> int:
        return 0 if self.soft_prompt is None else self.soft_prompt.shape[0]

    def _mask_with_soft_prompt(self, mask: torch.Tensor) -> torch.Tensor:
        if self.soft_prompt is None:
            return mask
        ones = torch.ones(mask.shape[0], self._num_virtual_tokens, dtype=mask.dtype, device=mask.device)
        return torch.cat([ones, mask], dim=1)

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer(prompt).input_ids for prompt in prompts]

    def encode_completions(self, completions: Sequence[Completion]) -> list[list[int]]:
        return [
            self.tokenizer(c, add_special_tokens=False).input_ids if isinstance(c, str) else [int(t) for t in c]
            for c in completions
        ]

    # ---------------------------------------------------------------- scoring
    def logprob(self, prompts: Sequence[str], completions: Sequence[Completion], batch_size: int | None = None) -> torch.Tensor:
        """Summed log-probabilities of each completion given its prompt: a differentiable
        tensor (len(prompts),).  A completion is text or a list of token ids (the exact
        tokens of a sample).  Neither padding nor micro-batching (``batch_size`` rows, default
        ``max_batch_size``; ``max_tokens_per_batch``) changes a value.  With gradients, every
        micro-batch's activations live until the caller's backward:
        :meth:`accumulate_gradient` frees each one after its own."""
        if len(prompts) != len(completions):
            raise ValueError(f"logprob: {len(prompts)} prompts but {len(completions)} completions")
        prompt_ids = self.encode_prompts(prompts)
        completion_ids = self.encode_completions(completions)
        parts = [self._logprob_batch(prompt_ids[rows], completion_ids[rows]) for rows in self._micro_batches(prompt_ids, completion_ids, batch_size)]
        self.meter.add_scored(sum(len(ids) for ids in completion_ids))
        positions = sum(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids))
        self.charge_flops(len(prompt_ids), positions, backprop=torch.is_grad_enabled() and bool(self.trainable_parameters()))
        return torch.cat(parts) if parts else torch.zeros(0, device=self.device)

    def _micro_batches(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], batch_size: int | None) -> list[slice]:
        """Consecutive rows in batches of at most ``batch_size`` rows (default
        ``max_batch_size``) and, where ``max_tokens_per_batch`` is set, of at most that many
        padded positions, as :meth:`_logprob_batch` lays them out (a row longer than that
        goes alone)."""
        max_rows, max_tokens = batch_size or self.max_batch_size, self.max_tokens_per_batch
        batches, start, widths = [], 0, (0, 1)
        for end, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids)):
            grown = (max(widths[0], len(prompt)), max(widths[1], len(completion)))
            positions = (end - start + 1) * (sum(grown) + self._num_virtual_tokens)
            if end > start and (end - start == max_rows or (max_tokens is not None and positions > max_tokens)):
                batches.append(slice(start, end))
                start, grown = end, (len(prompt), max(len(completion), 1))
            widths = grown
        if start < len(prompt_ids):
            batches.append(slice(start, len(prompt_ids)))
        return batches

    def _logprob_batch(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> torch.Tensor:
        # Prompts are left-padded and completions right-padded, so every completion starts at
        # the same column and only its logits need the vocabulary projection.
        prompt_len = max(len(ids) for ids in prompt_ids)
        completion_len = max(max(len(ids) for ids in completion_ids), 1)
        rows = len(prompt_ids)
        input_ids = torch.full((rows, prompt_len + completion_len), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        target_mask = torch.zeros(rows, completion_len, dtype=torch.bool)
        for row, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
            input_ids[row, prompt_len - len(p) : prompt_len] = torch.tensor(p, dtype=torch.long)
            input_ids[row, prompt_len : prompt_len + len(c)] = torch.tensor(c, dtype=torch.long)
            mask[row, prompt_len - len(p) : prompt_len + len(c)] = 1
            target_mask[row, : len(c)] = True
        input_ids, mask, target_mask = input_ids.to(self.device), mask.to(self.device), target_mask.to(self.device)
        with self._checkpointing():
            logits = self._forward(input_ids, self._mask_with_soft_prompt(mask), logits_to_keep=completion_len + 1)
        logits = logits[:, :-1].float()
        targets = input_ids[:, prompt_len:]
        token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return (token_logprobs * target_mask).sum(-1)

    def accumulate_gradient(
        self, prompts: Sequence[str], completions: Sequence[Completion], coefficients: Sequence[float] | torch.Tensor, batch_size: int | None = None
    ) -> float:
        """Backpropagate ``-(coefficients * logprob(prompts, completions)).sum()`` in micro
        batches (those of :meth:`logprob`; gradients accumulate in ``.grad``), so that a
        weighted score-function loss over many completions never holds all activations at
        once.  Returns the loss."""
        coefficients = torch.as_tensor(coefficients, dtype=torch.float32, device=self.device)
        if coefficients.shape != (len(prompts),):
            raise ValueError(f"accumulate_gradient: {len(prompts)} prompts but coefficients of shape {tuple(coefficients.shape)}")
        total = 0.0
        for rows in self._micro_batches(self.encode_prompts(prompts), self.encode_completions(completions), batch_size):
            loss = -(coefficients[rows] * self.logprob(prompts[rows], completions[rows], batch_size)).sum()
            if loss.requires_grad:
                loss.backward()
            total += float(loss.detach())
        return total

    # --------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        n: int = 1,
        *,
        temperature: float = 1.0,
        max_new_tokens: int = 256,
        stop: Sequence[str] | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
    ) -> Samples:
        """``n`` completions per prompt by ancestral sampling (exact model samples at the
        default temperature 1 without top-k / top-p).  A sample ends at EOS, at any string of
        ``stop``, or after ``max_new_tokens``.  ``seed`` makes the call reproducible;
        without it the policy's own generator (seeded at construction) is used."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if temperature <= 0:
            raise ValueError("temperature must be positive; use greedy() for temperature 0")
        return decode(self, prompts, n, temperature=temperature, max_new_tokens=max_new_tokens, stop=stop, top_k=top_k, top_p=top_p, seed=seed, batch_size=batch_size, greedy=False)

    def sampling_batch_size(self, prompt_tokens: int, new_tokens: int) -> int:
        """Rows decoded at once for prompts of up to ``prompt_tokens`` tokens: on a CPU
        ``max_batch_size``; on CUDA at most that, and no more than fit in
        ``SAMPLING_MEMORY_SHARE`` of the free memory (the driver's, plus what PyTorch holds
        cached but unused) at :func:`decode_bytes_per_row` each."""
        if self.device.type != "cuda":
            return self.max_batch_size
        free, _ = torch.cuda.mem_get_info(self.device)
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        per_row = decode_bytes_per_row(self.base_model.config, self.base_model.dtype, prompt_tokens + self._num_virtual_tokens, new_tokens)
        return max(1, min(self.max_batch_size, int(free * SAMPLING_MEMORY_SHARE) // per_row))

    @torch.no_grad()
    def greedy(self, prompts: Sequence[str], *, max_new_tokens: int = 256, stop: Sequence[str] | None = None, batch_size: int | None = None) -> Samples:
        """Greedy (arg-max) decoding, for evaluation."""
        return decode(self, prompts, 1, temperature=1.0, max_new_tokens=max_new_tokens, stop=stop, top_k=None, top_p=None, seed=None, batch_size=batch_size, greedy=True)

    # -------------------------------------------------------------- optimizer
    def make_optimizer(self, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
        """AdamW over the tunable parameters (with ``master_weights``, over their float32
        copies: its state is float32 too)."""
        return torch.optim.AdamW(self.optimized_tensors(), lr=lr, weight_decay=weight_decay, betas=betas)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, scheduler=None, max_grad_norm: float | None = 1.0) -> float:
        """Clip, step, zero the gradients and charge one optimizer step; returns the
        gradient norm before clipping.  With ``master_weights`` the gradients move to the
        float32 copies (an optimizer from :meth:`make_optimizer` steps those), and the
        copies are rounded back into the model's weights."""
        for parameter, master in self._master_pairs():
            master.grad = None if parameter.grad is None else parameter.grad.to(torch.float32)
            parameter.grad = None
        parameters = self.optimized_tensors()
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            norm = 0.0
        elif max_grad_norm is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        optimizer.step()
        self._copy_masters(to_model=True)
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        self.meter.add_optimizer_step()
        return norm

    def _master_pairs(self) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        return [(p, self._masters[id(p)]) for p in self.trainable_parameters() if id(p) in self._masters]

    @torch.no_grad()
    def _copy_masters(self, to_model: bool) -> None:
        """Round the float32 master copies into the model's weights, or refresh them from it."""
        for parameter, master in self._master_pairs():
            target, source = (parameter, master) if to_model else (master, parameter)
            target.copy_(source)

    # ------------------------------------------------------------ persistence
    def tunable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tuned parameters only (all weights for ``full``), detached copies; the float32
        master copies where the policy keeps them, so that a checkpoint resumes exactly."""
        names = {id(p): name for name, p in self.model.named_parameters()}
        return {names[id(p)]: value.detach().clone() for p, value in zip(self.trainable_parameters(), self.optimized_tensors())}

    def load_tunable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        parameters = dict(self.model.named_parameters())
        missing = [name for name in self.tunable_state_dict() if name not in state]
        unknown = [name for name in state if name not in parameters]
        if missing or unknown:
            raise ValueError(f"tunable state does not match this policy (tune={self.tune}): missing {missing[:5]}, unknown {unknown[:5]}")
        with torch.no_grad():
            for name, value in state.items():
                parameter = parameters[name]
                parameter.copy_(value.to(parameter.device, parameter.dtype))
                if id(parameter) in self._masters:
                    self._masters[id(parameter)].copy_(value)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tunable part: a full HF model folder for ``full``, a peft adapter folder
        (``adapter_config.json`` + ``adapter_model.safetensors``) for ``lora`` / ``prompt``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        if self.tune == "full":
            self.tokenizer.save_pretrained(path)
        (path / _POLICY_FILE).write_text(json.dumps({"tune": self.tune}, indent=2))
        return path

    def load(self, path: str | os.PathLike) -> None:
        """Load what :meth:`save` wrote into this policy (same base model and tune mode)."""
        path = Path(path)
        info_file = path / _POLICY_FILE
        if not info_file.exists():
            raise FileNotFoundError(f"{info_file} not found: {path} was not written by Policy.save")
        saved_tune = json.loads(info_file.read_text())["tune"]
        if saved_tune != self.tune:
            raise ValueError(f"{path} holds tune={saved_tune!r} parameters but this policy has tune={self.tune!r}")
        if self.tune == "full":
            self.model.load_state_dict(AutoModelForCausalLM.from_pretrained(path).state_dict())
        else:
            self._load_adapter(path)
        self._copy_masters(to_model=False)

    def _load_adapter(self, path: Path) -> None:
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        result = set_peft_model_state_dict(self.model, load_peft_weights(str(path), device=str(self.device)))
        # peft loads prompt embeddings outside the module state dict and lists them as unexpected.
        unexpected = [key for key in getattr(result, "unexpected_keys", []) if key != "prompt_embeddings"]
        if unexpected:
            raise ValueError(f"{path}: adapter weights do not fit this model: {unexpected[:5]}")

    def rng_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def decode_bytes_per_row(config, dtype: torch.dtype, prompt_tokens: int, new_tokens: int) -> int:
    """The most memory one sampled row takes, from the model's shape: its KV cache
    (layers × 2 × KV heads × head size × bytes × positions), twice over, since the cache is
    copied when it grows or is repeated for a prompt's samples; the prefill's widest
    activations over the prompt (three of hidden and of MLP width per token, and attention
    scores in float32 where they are materialised); and the float32 / float64 work on the
    row's logits while drawing a token."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    mlp_width = getattr(config, "intermediate_size", None) or 4 * config.hidden_size
    size = dtype.itemsize
    cache = config.num_hidden_layers * 2 * kv_heads * head_dim * size * (prompt_tokens + new_tokens)
    prefill = prompt_tokens * (3 * (config.hidden_size + mlp_width) * size + heads * prompt_tokens * 4)
    logits = config.vocab_size * (size + 4 + 4 + 4 + 8)  # logits, as float32, log-softmax, probabilities, float64 cumulative sum
    return 2 * cache + prefill + logits


def _eos_ids(model: PreTrainedModel, tokenizer) -> list[int]:
    ids: set[int] = set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, Iterable):
            ids.update(int(v) for v in value)
    return sorted(ids)
