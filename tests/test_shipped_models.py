"""The built-in models ship with the package: every user starts from the same weights, the
files are checked against the manifest, and the recorded accuracy is what they give."""

import json
import shutil

import pytest

from trice_rl import builtin_model as builtin
from trice_rl.builtin_model import cli as builtin_cli
from trice_rl.policy import Policy

SHIPPED = sorted(builtin.shipped_manifest())


def test_every_family_ships():
    assert SHIPPED == sorted(builtin.FAMILIES)


@pytest.mark.parametrize("family", SHIPPED)
def test_a_shipped_model_loads_through_the_policy_and_gives_its_recorded_accuracy(family, data_dir):
    assert builtin.resolve_builtin(f"builtin:{family}") == builtin.SHIPPED_MODELS / family
    for path in (builtin.SHIPPED_MODELS / family).iterdir():
        assert path.stat().st_size < 5 * 2**20, path
    # Exact: the weights are fixed, and greedy decoding is deterministic.
    assert builtin_cli.slice_greedy_accuracy(family) == builtin.shipped_manifest()[family]["slice_greedy"]


@pytest.fixture
def fake_shipment(tmp_path, monkeypatch):
    """A package whose shipped arithmetic model is the tiny cache build."""
    monkeypatch.setenv("TRICE_RL_CACHE", str(tmp_path / "cache"))
    source = builtin.builtin_model_path(size="tiny")
    models = tmp_path / "models"
    shutil.copytree(source, models / "arithmetic")
    files = {p.name: builtin.sha256_of(p) for p in sorted((models / "arithmetic").iterdir())}
    (models / "manifest.json").write_text(json.dumps({"arithmetic": {"files": files, "slice_greedy": 0.0}}))
    monkeypatch.setattr(builtin, "SHIPPED_MODELS", models)
    monkeypatch.setattr(builtin, "SHIPPED_MANIFEST", models / "manifest.json")
    return models / "arithmetic"


def test_the_policy_path_uses_the_shipped_files(fake_shipment):
    policy = Policy.from_pretrained("builtin")
    assert policy.model.name_or_path == str(fake_shipment)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_shipped_file_is_reported_with_the_way_out(fake_shipment, damage):
    weights = fake_shipment / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
    else:
        weights.unlink()
    with pytest.raises(builtin.ShippedModelError, match=r"model\.safetensors.*--model builtin:arithmetic:cache"):
        Policy.from_pretrained("builtin:arithmetic")


def test_the_cache_copy_only_when_asked(fake_shipment, monkeypatch):
    built = []
    monkeypatch.setattr(builtin, "builtin_model_path", lambda family, size="default", **_: built.append((family, size)) or fake_shipment)
    assert builtin.resolve_builtin("builtin:arithmetic") == fake_shipment and not built
    builtin.resolve_builtin("builtin:arithmetic:cache")
    builtin.resolve_builtin("builtin:boolean_expressions")  # not shipped here: built into the cache
    assert built == [("arithmetic", "default"), ("boolean_expressions", "default")]
    with pytest.raises(ValueError, match="variants default, tiny, cache"):
        builtin.resolve_builtin("builtin:arithmetic:huge")


@pytest.mark.build
@pytest.mark.parametrize("family", SHIPPED)
def test_the_recipe_rebuilds_a_model_near_the_shipped_one(family, tmp_path, monkeypatch, data_dir):
    """A fresh build (float rounding differs between CPUs) lands near the shipped accuracy."""
    monkeypatch.setenv("TRICE_RL_CACHE", str(tmp_path))
    folder = builtin.builtin_model_path(family)
    monkeypatch.setattr(builtin, "SHIPPED_MANIFEST", tmp_path / "none.json")  # builtin:<family> → the rebuild
    assert builtin.resolve_builtin(f"builtin:{family}") == folder
    assert abs(builtin_cli.slice_greedy_accuracy(family) - json.loads(builtin.SHIPPED_MODELS.joinpath("manifest.json").read_text())[family]["slice_greedy"]) <= 0.15
