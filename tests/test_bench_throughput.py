"""experiments/bench_throughput.py: a smoke run's CSV, and FlopCounterMode's count of a Llama
forward and backward against the textbook count."""

import csv

import pytest
import torch

from tests.conftest import load_script

bench = load_script("bench_throughput")

SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def test_a_smoke_run_writes_positive_times_and_flops(tmp_path, data_dir):
    out = tmp_path / "throughput.csv"
    bench.main(["--smoke", "--models", "random", "--threads", "1", "--out", str(out)])
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == bench.COLUMNS
    assert [row["implementation"] for row in rows] == ["policy.sample", "model.generate", "ours:trice", "ours:grpo", "trl:GRPOTrainer"]
    for row in rows:
        assert float(row["seconds"]) > 0 and float(row["model_flops"]) > 0 and float(row["flops_per_s"]) > 0


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_llama_forward_counts_2n_per_token_plus_head_and_attention(attention):
    model, _ = bench.random_llama(SHAPE, attention=attention)
    rows, length = 3, 50
    ids = torch.randint(4, model.config.vocab_size, (rows, length))
    tokens = rows * length
    linear = 2 * bench.non_embedding_parameters(model) * tokens
    head = 2 * model.config.vocab_size * SHAPE["hidden_size"] * tokens
    # scores and weighted values: two (length x head_dim) @ (head_dim x length) products a head
    scores = SHAPE["num_hidden_layers"] * 2 * 2 * rows * length * length * SHAPE["hidden_size"]
    with torch.no_grad():
        _, forward = bench.counted_flops(lambda: model(input_ids=ids))
    # N also holds the RMSNorm weights, which enter no matrix product: 0.3% of this count
    assert forward == pytest.approx(linear + head + scores, rel=0.005)
    # a backward pass does each product twice more (the input's and the weight's gradient);
    # SDPA's fused kernel also recomputes the scores
    _, training = bench.counted_flops(lambda: model(input_ids=ids).logits.sum().backward())
    assert training == 3 * forward + (scores // 2 if attention == "sdpa" else 0)
