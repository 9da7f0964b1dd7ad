"""Decoding for :meth:`Policy.sample` and :meth:`Policy.greedy`.

Why a hand-written loop instead of ``model.generate``: TRICE's acceptance rule is only
exact for unmodified ancestral samples, and every algorithm needs the summed
log-probability of exactly the tokens it drew.  The loop samples from the model's softmax
at temperature 1 (no top-k / top-p unless asked), left-pads prompts with positions derived
from the attention mask (so padding never changes a result), encodes each prompt once for
its ``n`` samples and drops finished rows from the batch.

Why a hand-written forward for Llama models: on a CPU, a small model's decode step is
mostly the Hugging Face forward's per-call overhead (masks, cache objects, many small
modules), not arithmetic.  :class:`_LlamaDecoder` runs the same computation from the
model's own weights (read fresh on every call, since training changes them) over a
preallocated KV cache, with the Q/K/V and gate/up matmuls fused and LoRA deltas added to
the fused weights.  Every other model, and LoRA variants it does not know (DoRA, LoRA
bias), decode through :class:`_HFDecoder`, the model's own forward.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LlamaForCausalLM
from transformers.cache_utils import DynamicLayer

from envs.base import cut_at_stop

# The functions here take a ``trice_rl.policy.Policy`` (left unannotated: the policy module
# imports this one).

# RoPE types whose frequencies do not depend on the sequence length seen so far, so that
# one table of cos / sin per decode reproduces the model's own per-call computation.
_STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# Positions the Llama path's KV cache grows by (see _LlamaDecoder._grow).
_CACHE_CHUNK = 32


@dataclass
class Samples:
    """Completions drawn by :meth:`Policy.sample` (prompt-major: prompt ``i``'s samples are
    rows ``i*n .. i*n+n-1``).

    ``token_ids`` are exactly the tokens drawn, including the EOS token or the tokens of the
    stop string that ended a sample; pass them (not ``texts``) to :meth:`Policy.logprob` to
    score a sample exactly.  ``texts`` are decoded without special tokens and cut before the
    stop string.  ``logprobs`` are the summed log-probabilities of ``token_ids`` under the
    model (temperature 1, no truncation), whatever sampling settings drew them.
    """

    texts: list[str]
    token_ids: list[list[int]]
    logprobs: torch.Tensor
    prompt_index: list[int]
    finished: list[bool]

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids in self.token_ids)


@dataclass(frozen=True)
class _Settings:
    n: int
    temperature: float
    max_new_tokens: int
    stop: tuple[str, ...]
    top_k: int | None
    top_p: float | None
    greedy: bool
    generator: torch.Generator


def decode(policy, prompts: Sequence[str], n: int, *, temperature: float, max_new_tokens: int, stop, top_k, top_p, seed, batch_size, greedy: bool) -> Samples:
    """``n`` completions per prompt, drawn in batches of at most ``batch_size`` rows
    (default: :meth:`Policy.sampling_batch_size`, which on CUDA fits free memory)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    generator = policy.generator if seed is None else torch.Generator(device=policy.device).manual_seed(seed)
    settings = _Settings(n, temperature, max_new_tokens, tuple(s for s in (stop or ()) if s), top_k, top_p, greedy, generator)
    prompt_ids = policy.encode_prompts(prompts)
    rows = batch_size or policy.sampling_batch_size(max(map(len, prompt_ids), default=0), max_new_tokens)
    prompts_per_batch = max(1, rows // n)
    decoder_class = _LlamaDecoder if _LlamaDecoder.supports(policy) else _HFDecoder
    was_training = policy.model.training
    policy.model.eval()
    token_ids: list[list[int]] = []
    logprobs: list[torch.Tensor] = []
    finished: list[bool] = []
    try:
        for start in range(0, len(prompt_ids), prompts_per_batch):
            ids, lps, done = _decode_batch(policy, decoder_class, prompt_ids[start : start + prompts_per_batch], settings)
            token_ids += ids
            logprobs.append(lps)
            finished += done
    finally:
        policy.model.train(was_training)
    samples = Samples(
        texts=[_completion_text(policy.tokenizer, ids, settings.stop) for ids in token_ids],
        token_ids=token_ids,
        logprobs=torch.cat(logprobs) if logprobs else torch.zeros(0),
        prompt_index=[i for i in range(len(prompts)) for _ in range(n)],
        finished=finished,
    )
    policy.meter.add_samples(len(samples), samples.num_tokens)
    prompt_positions = sum(len(prompt_ids[i]) for i in samples.prompt_index)
    policy.charge_flops(len(samples), prompt_positions + samples.num_tokens, backprop=False)
    return samples


def _completion_text(tokenizer, ids: list[int], stop: tuple[str, ...]) -> str:
    return cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop)


def _left_padded(prompt_ids: list[list[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids) :] = 1
    return input_ids.to(device), mask.to(device)


def _decode_batch(policy, decoder_class, prompt_ids: list[list[int]], settings: _Settings):
    """Token ids, summed log-probabilities and finished flags of ``n`` samples of each prompt."""
    device = policy.device
    input_ids, mask = _left_padded(prompt_ids, policy.pad_token_id, device)
    decoder = decoder_class(policy, len(prompt_ids) * settings.n, input_ids.shape[1] + settings.max_new_tokens)
    logits = decoder.prefill(input_ids, mask, settings.n)
    rows = logits.shape[0]
    active = torch.arange(rows, device=device)  # original row of each row still running
    generated = torch.full((rows, settings.max_new_tokens), policy.pad_token_id, dtype=torch.long, device=device)
    lengths = torch.full((rows,), settings.max_new_tokens, dtype=torch.long, device=device)
    total_logprob = torch.zeros(rows, dtype=torch.float32, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    eos = torch.tensor(policy.eos_token_ids, dtype=torch.long, device=device)
    stops = _StopStrings(policy.tokenizer, settings.stop)
    for step in range(settings.max_new_tokens):
        next_tokens, token_logprobs = _next_tokens(logits, settings)
        total_logprob.index_add_(0, active, token_logprobs)
        generated[active, step] = next_tokens
        ended = torch.isin(next_tokens, eos)
        if stops:
            ended |= stops.hit(generated, active, step)
        any_ended = bool(ended.any())
        if any_ended:
            finished_rows = active[ended]
            done[finished_rows] = True
            lengths[finished_rows] = step + 1
        if step + 1 == settings.max_new_tokens or (any_ended and bool(ended.all())):
            break
        if any_ended:
            kept = _fill_holes(~ended)
            decoder.select(kept)
            active, next_tokens = active[kept], next_tokens[kept]
        logits = decoder.step(next_tokens)
    generated, lengths = generated.cpu(), lengths.cpu().tolist()
    token_ids = [generated[row, : lengths[row]].tolist() for row in range(rows)]
    return token_ids, total_logprob.cpu(), done.cpu().tolist()


def _next_tokens(logits: torch.Tensor, settings: _Settings) -> tuple[torch.Tensor, torch.Tensor]:
    """The next token of every row and its log-probability under the model (temperature 1,
    no truncation), whatever rule drew it."""
    model_logprobs = torch.log_softmax(logits, dim=-1)
    if settings.greedy:
        tokens = model_logprobs.argmax(dim=-1)
    elif settings.temperature == 1.0 and settings.top_k is None and settings.top_p is None:  # the model's own softmax
        tokens = _sample(model_logprobs.exp(), settings.generator)
    else:
        tokens = _draw(logits, settings.temperature, settings.top_k, settings.top_p, settings.generator)
    return tokens, model_logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _draw(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator) -> torch.Tensor:
    """One token per row from softmax(logits / temperature), optionally truncated."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop_sorted = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -math.inf)
    return _sample(torch.softmax(logits, dim=-1), generator)


def _sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row with the given probabilities, by inverting the cumulative
    distribution (in float64) at one uniform draw per row: ``torch.multinomial`` draws one
    exponential per vocabulary entry, which took longer than a decode step's attention."""
    cumulative = probs.double().cumsum(dim=-1)
    uniform = torch.rand(len(probs), 1, generator=generator, device=probs.device, dtype=torch.float64)
    return torch.searchsorted(cumulative, uniform * cumulative[:, -1:], right=True).squeeze(-1)


class _StopStrings:
    """Which rows' latest token completed a stop string.  The last few tokens of a row are
    decoded together, as the final text is, but only for rows whose new token can end a
    stop string (see :func:`_stop_candidates`), so that most steps decode nothing."""

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.window = max((len(s) for s in stop), default=0) + 2
        self.candidates = _stop_candidates(tokenizer, stop) if stop else None

    def __bool__(self) -> bool:
        return bool(self.stop)

    def hit(self, generated: torch.Tensor, active: torch.Tensor, step: int) -> torch.Tensor:
        latest = generated[active, step].cpu()
        check = torch.ones(len(latest), dtype=torch.bool)
        if self.candidates is not None:
            known = latest < len(self.candidates)  # ids past the tokenizer's vocabulary are always checked
            check[known] = self.candidates[latest[known]]
        ended = torch.zeros(len(latest), dtype=torch.bool)
        rows = check.nonzero().squeeze(-1)
        if len(rows):
            tails = generated[active[rows.to(active.device)], max(0, step + 1 - self.window) : step + 1].tolist()
            texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
            ended[rows] = torch.tensor([any(s in text for s in self.stop) for text in texts])
        return ended.to(generated.device)


@functools.lru_cache(maxsize=16)
def _stop_candidates(tokenizer, stop: tuple[str, ...]) -> torch.Tensor | None:
    """Which token ids can complete one of ``stop`` (None: any can).  A stop string that a
    token completes ends inside that token's text, so the token's text holds the stop
    string's last character; a token whose text alone is empty or not whole characters
    (byte pieces) is always a candidate, and so is every token when a stop string ends in
    whitespace, which some tokenizers attach to the next token.  Cached: decoding a large
    vocabulary takes a while."""
    if any(s[-1].isspace() for s in stop):
        return None
    ends = {s[-1] for s in stop}
    pieces = tokenizer.batch_decode([[t] for t in range(len(tokenizer))], skip_special_tokens=False)
    return torch.tensor([not piece or "\ufffd" in piece or any(c in piece for c in ends) for piece in pieces])


def _fill_holes(keep: torch.Tensor) -> torch.Tensor:
    """Row indices that keep the rows where ``keep`` is true: each dropped row among the
    first ``keep.sum()`` is replaced by a kept row from after them, so that compacting the
    KV cache moves only as many rows as were dropped (copying every kept row into a new
    buffer cost seven times an attention pass over it)."""
    count = int(keep.sum())
    order = torch.arange(count, device=keep.device)
    order[(~keep[:count]).nonzero().squeeze(-1)] = keep[count:].nonzero().squeeze(-1) + count
    return order


def _move_rows(buffer: torch.Tensor, indices: torch.Tensor, dim: int, length: int | None = None) -> None:
    """Write rows ``indices`` of ``buffer`` (along ``dim``) to rows ``0 .. len(indices)-1``,
    in place, copying only rows that change place (and only the first ``length`` positions
    of the last-but-one dimension, where given)."""
    moved = (indices != torch.arange(len(indices), device=indices.device)).nonzero().squeeze(-1)
    if not len(moved):
        return
    view = buffer.movedim(dim, 0)
    if length is not None:
        view = view[..., :length, :]
    view[moved] = view[indices[moved]]  # gathered before written: a source that is also a target is read intact


# ------------------------------------------------------------------ the Hugging Face path
class _HFDecoder:
    """Decoding through the model's own forward (any architecture, any peft mode), with a
    KV cache preallocated for the whole decode."""

    def __init__(self, policy, rows: int, capacity: int):
        self.policy = policy
        self.cache = _preallocated_cache(policy._lm.config, capacity + policy._num_virtual_tokens)

    def prefill(self, input_ids: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
        self.mask = self.policy._mask_with_soft_prompt(mask)
        logits = self.policy._forward(input_ids, self.mask, cache=self.cache, logits_to_keep=1)[:, -1].float()
        if n > 1:
            self.cache.batch_repeat_interleave(n)
            self.mask = self.mask.repeat_interleave(n, dim=0)
            logits = logits.repeat_interleave(n, dim=0)
        return logits

    def select(self, kept: torch.Tensor) -> None:
        self.cache.batch_select_indices(kept)
        self.mask = self.mask[kept]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        return self.policy._forward(tokens.unsqueeze(-1), self.mask, cache=self.cache, logits_to_keep=1)[:, -1].float()


class _PreallocatedLayer(DynamicLayer):
    """A full-attention cache layer that writes each step into a buffer sized for the whole
    decode.  ``DynamicLayer`` concatenates the whole cache with every new token, which made
    a third of the built-in model's decoding time on a CPU; this one copies only the new
    token's keys and values and hands attention a view of the filled part."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        batch, heads, _, _ = key_states.shape
        self.key_buffer = key_states.new_empty(batch, heads, self.capacity, key_states.shape[-1])
        self.value_buffer = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"the cache holds {self.capacity} positions; {end} were written")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def _expose(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length:
            self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
            self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
            self._expose()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (no more than there are), in that order: only the rows
        that change place are copied, and only their filled positions."""
        if not self.is_initialized:
            return
        if len(indices) > self.key_buffer.shape[0]:
            raise ValueError(f"cannot select {len(indices)} rows from {self.key_buffer.shape[0]}")
        if self.length:
            _move_rows(self.key_buffer, indices, 0, self.length)
            _move_rows(self.value_buffer, indices, 0, self.length)
        self.key_buffer = self.key_buffer[: len(indices)]
        self.value_buffer = self.value_buffer[: len(indices)]
        self._expose()


def _preallocated_cache(config, capacity: int) -> DynamicCache:
    """A ``DynamicCache`` whose full-attention layers are :class:`_PreallocatedLayer` of
    ``capacity`` positions (sliding-window and other layer kinds stay as the model made them)."""
    cache = DynamicCache(config=config)
    cache.layers = [_PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


# ------------------------------------------------------------------ the Llama path
@dataclass
class _LlamaLayer:
    """One decoder layer's weights as the decode uses them: Q/K/V and gate/up fused."""

    input_norm: torch.Tensor
    qkv: tuple[torch.Tensor, torch.Tensor | None]
    out: tuple[torch.Tensor, torch.Tensor | None]
    post_norm: torch.Tensor
    gate_up: tuple[torch.Tensor, torch.Tensor | None]
    down: tuple[torch.Tensor, torch.Tensor | None]
    act: object


def _is_plain_or_lora_linear(module) -> bool:
    if type(module) is torch.nn.Linear:
        return True
    from peft.tuners.lora import Linear as LoraLinear

    return (
        type(module) is LoraLinear
        and not module.lora_variant  # DoRA and other variants change the forward
        and all(module.lora_B[name].bias is None for name in module.lora_B)
        and type(module.base_layer) is torch.nn.Linear
    )


def _linear(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias that the module applies, a LoRA module's active deltas added (merge-free:
    the module's own weights are untouched)."""
    if type(module) is torch.nn.Linear:
        return module.weight, module.bias
    weight = module.base_layer.weight
    if not module.disable_adapters and not module.merged:
        for name in module.active_adapters:
            if name in module.lora_A:
                weight = weight + module.get_delta_weight(name).to(weight.dtype)  # float32 adapters on a bfloat16 base
    return weight, module.base_layer.bias


def _fused(*modules) -> tuple[torch.Tensor, torch.Tensor | None]:
    weights, biases = zip(*(_linear(m) for m in modules))
    bias = None if all(b is None for b in biases) else torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(weights, biases)])
    return torch.cat(weights), bias


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As ``LlamaRMSNorm``: normalised in float32, scaled in the input's dtype (in float32,
    the fused ``F.rms_norm`` computes the same values in one op)."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class _LlamaDecoder:
    """A lean forward of ``LlamaForCausalLM`` over a preallocated KV cache.

    The cache is one tensor (layer, key / value, row, head, position, dim), so that dropping
    finished rows is one copy; ``valid`` marks the positions that hold tokens (prompts are
    left-padded), ``positions`` is each row's next RoPE position."""

    @staticmethod
    def supports(policy) -> bool:
        model = policy.base_model
        if type(model) is not LlamaForCausalLM or policy.tune not in ("full", "lora", "prompt"):
            return False
        config = model.config
        rope = getattr(config, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") not in _STATIC_ROPE_TYPES or type(model.model.embed_tokens) is not torch.nn.Embedding:
            return False
        linears = [model.lm_head] + [
            linear
            for layer in model.model.layers
            for linear in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
        ]
        return all(_is_plain_or_lora_linear(linear) for linear in linears)

    def __init__(self, policy, rows: int, capacity: int):
        model = policy.base_model
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling = self.head_dim**-0.5
        self.eps = config.rms_norm_eps
        self.embed = model.model.embed_tokens.weight
        self.soft_prompt = policy.soft_prompt
        capacity += policy._num_virtual_tokens
        self.layers = [self._layer_weights(layer) for layer in model.model.layers[: config.num_hidden_layers]]
        self.norm = model.model.norm.weight
        self.head = _linear(model.lm_head)
        positions = torch.arange(capacity, device=self.embed.device).unsqueeze(0)
        cos, sin = model.model.rotary_emb(self.embed[:1], positions)  # the model's own RoPE, every position
        half = self.head_dim // 2
        # rotate_half(x) * sin == roll(x, half) * sin with the first half's sign folded into sin
        self.cos, self.sin = cos[0], torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)
        self.rows, self.length = rows, 0

    @staticmethod
    def _layer_weights(layer) -> _LlamaLayer:
        attention, mlp = layer.self_attn, layer.mlp
        return _LlamaLayer(
            input_norm=layer.input_layernorm.weight,
            qkv=_fused(attention.q_proj, attention.k_proj, attention.v_proj),
            out=_linear(attention.o_proj),
            post_norm=layer.post_attention_layernorm.weight,
            gate_up=_fused(mlp.gate_proj, mlp.up_proj),
            down=_linear(mlp.down_proj),
            act=mlp.act_fn,
        )

    def prefill(self, input_ids: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
        """Encode the prompts (and the soft prompt) once; each prompt's cache rows are
        repeated for its ``n`` samples."""
        x = F.embedding(input_ids, self.embed)
        if self.soft_prompt is not None:
            x = torch.cat([self.soft_prompt.to(x.dtype).unsqueeze(0).expand(len(x), -1, -1), x], dim=1)
            mask = torch.cat([mask.new_ones(len(x), self.soft_prompt.shape[0]), mask], dim=1)
        width = x.shape[1]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # A padding query attends to itself too, so that no softmax row is empty.
        causal = torch.ones(width, width, dtype=torch.bool, device=x.device).tril()
        attend = (causal & mask.bool()[:, None, :]) | torch.eye(width, dtype=torch.bool, device=x.device)
        bias = torch.zeros(attend.shape, dtype=x.dtype, device=x.device).masked_fill_(~attend, -math.inf)
        keys = torch.empty(len(self.layers), 2, len(x), self.kv_heads, width, self.head_dim, dtype=x.dtype, device=x.device)
        x = self._forward(x, positions, bias.unsqueeze(1), keys, 0)
        # The last query (a token in every row) sees exactly the positions that hold tokens.
        self.cache, self.bias, self.length = keys.repeat_interleave(n, dim=2), bias[:, -1].repeat_interleave(n, dim=0), width
        self._grow()
        self.positions = positions[:, -1].repeat_interleave(n) + 1
        return self._logits(x[:, -1]).repeat_interleave(n, dim=0)

    def select(self, kept: torch.Tensor) -> None:
        _move_rows(self.cache, kept, 2, self.length)
        _move_rows(self.bias, kept, 0)
        self.positions = self.positions[kept]
        self.rows = len(kept)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        rows, start = self.rows, self.length
        if start == self.cache.shape[-2]:
            self._grow()
        self.bias[:rows, start] = 0.0
        bias = self.bias[:rows, None, None, :]
        x = self._forward(F.embedding(tokens, self.embed).unsqueeze(1), self.positions.unsqueeze(1), bias, self.cache[:, :, :rows], start)
        self.positions = self.positions + 1
        self.length = start + 1
        return self._logits(x[:, -1])

    def _grow(self) -> None:
        """Room for ``_CACHE_CHUNK`` more positions (and only the rows still running).
        Attention always reads the whole buffer, unwritten positions masked: batched matmuls
        over a slice of a longer buffer ran slower on a CPU than over whole, contiguous ones
        (measured end to end: 2.8 s against 2.2 s for the built-in model's
        evaluation-shaped greedy decode on one thread)."""
        rows, length = self.rows, self.length
        cache = self.cache.new_empty(*self.cache.shape[:2], rows, self.kv_heads, length + _CACHE_CHUNK, self.head_dim)
        cache[..., :length, :] = self.cache[:, :, :rows]
        cache[..., length:, :] = 0.0  # finite, so that masked positions add nothing
        bias = self.bias.new_full((rows, length + _CACHE_CHUNK), -math.inf)
        bias[:, :length] = self.bias[:rows]
        self.cache, self.bias = cache, bias

    def _forward(self, x: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor, cache: torch.Tensor, start: int) -> torch.Tensor:
        """Hidden states after every layer, for ``x`` (rows, tokens, width) at cache
        positions ``start ..``; writes the tokens' keys and values into ``cache``."""
        rows, tokens, _ = x.shape
        end = start + tokens
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        rotated = self.heads + self.kv_heads
        for index, layer in enumerate(self.layers):
            h = _rms_norm(x, layer.input_norm, self.eps)
            qkv = F.linear(h, *layer.qkv).view(rows, tokens, -1, self.head_dim).transpose(1, 2)
            qk = qkv[:, :rotated]
            qk = qk * cos + qk.roll(self.head_dim // 2, dims=-1) * sin
            cache[index, 0, :, :, start:end] = qk[:, self.heads :]
            cache[index, 1, :, :, start:end] = qkv[:, rotated:]
            attention = self._attention(qk[:, : self.heads], cache[index, 0], cache[index, 1], bias)
            x = x + F.linear(attention.reshape(rows, tokens, -1), *layer.out)
            h = _rms_norm(x, layer.post_norm, self.eps)
            gate, up = F.linear(h, *layer.gate_up).chunk(2, dim=-1)
            x = x + F.linear(layer.act(gate) * up, *layer.down)
        return x

    def _attention(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Softmax attention, (rows, tokens, heads, dim), as the model's eager attention computes
        it; each key/value head serves its group of query heads without being repeated.
        (On a CPU, ``scaled_dot_product_attention`` took several times as long for one query
        per row.)"""
        rows, _, tokens, dim = queries.shape
        grouped = queries.reshape(rows, self.kv_heads, -1, dim)  # query heads are grouped by key/value head
        scores = torch.matmul(grouped, keys.transpose(-1, -2)) * self.scaling
        scores = scores.view(rows, self.heads, tokens, -1) + bias
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
        output = torch.matmul(weights.view(rows, self.kv_heads, -1, keys.shape[-2]), values)
        return output.view(rows, self.heads, tokens, dim).transpose(1, 2)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(_rms_norm(hidden, self.norm, self.eps), *self.head).float()
