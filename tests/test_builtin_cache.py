"""The built-in model's cache: a damaged or unfinished entry is detected and rebuilt, never
returned (tiny builds, a temporary cache)."""

import re
import shutil

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import trice_rl.builtin_model as builtin
from trice_rl.builtin_model import cli as builtin_cli


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRICE_RL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def builds(monkeypatch):
    """The configs that ``build`` was called with, in order (the real build still runs)."""
    calls = []
    real_build = builtin.build

    def counting_build(config, staging):
        calls.append(config)
        real_build(config, staging)

    monkeypatch.setattr(builtin, "build", counting_build)
    return calls


def truncate_weights(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def empty_weights(folder):
    (folder / "model.safetensors").write_bytes(b"")


def delete_weights(folder):
    (folder / "model.safetensors").unlink()


def empty_folder(folder):
    shutil.rmtree(folder)
    folder.mkdir()


def delete_marker(folder):
    """The cache entry of a build from before completion markers (or one killed before them)."""
    for path in folder.iterdir():
        if path.name not in {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                             "tokenizer_config.json", builtin.CONFIG_FILE}:
            path.unlink()


def flip_a_weight_byte(folder):
    """Same size, other bytes: only the checksum can tell."""
    weights = bytearray((folder / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(weights))


DAMAGES = [truncate_weights, empty_weights, delete_weights, empty_folder, delete_marker, flip_a_weight_byte]


def assert_usable(folder):
    """Loads as an HF model folder, and is the only entry in the cache (no temp folder left)."""
    load_file(folder / "model.safetensors")
    AutoModelForCausalLM.from_pretrained(folder)
    AutoTokenizer.from_pretrained(folder)
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_entry_is_rebuilt_in_place(cache, builds, damage, capsys):
    folder = builtin.builtin_model_path(size="tiny")
    original = {name: tensor.clone() for name, tensor in load_file(folder / "model.safetensors").items()}  # not mmapped
    damage(folder)
    assert builtin.builtin_model_path(size="tiny") == folder
    assert len(builds) == 2
    assert_usable(folder)
    rebuilt = load_file(folder / "model.safetensors")
    assert rebuilt.keys() == original.keys() and all((rebuilt[k] == original[k]).all() for k in rebuilt)
    assert re.search(rf"cached built-in model .*{folder.name} is unusable \(.+\): rebuilding it", capsys.readouterr().err)


@pytest.mark.parametrize("damage", [truncate_weights, empty_folder, delete_marker])
def test_the_cli_rebuilds_a_damaged_entry_instead_of_reporting_it_built(cache, builds, damage, capsys):
    builtin_cli.main(["--size", "tiny", "--examples", "0"])
    folder = next((cache / "builtin").iterdir())
    damage(folder)
    capsys.readouterr()
    builtin_cli.main(["--size", "tiny", "--examples", "0"])
    out, err = capsys.readouterr()
    assert len(builds) == 2 and "is unusable" in err
    assert f"model: {folder}" in out and "parameters:" in out
    assert_usable(folder)


def test_an_intact_entry_is_not_rebuilt(cache, builds):
    folder = builtin.builtin_model_path(size="tiny")
    (folder / "notes.txt").write_text("a file the marker does not list is left alone")
    assert builtin.builtin_model_path(size="tiny") == folder and len(builds) == 1


@pytest.mark.parametrize("damaged", [False, True], ids=["missing", "damaged"])
def test_two_builders_at_once_end_with_one_good_copy(cache, monkeypatch, damaged):
    """The other builder renames its finished copy into place while this one is still
    building: this one's rename fails and it keeps the other's copy."""
    real_build = builtin.build
    if damaged:
        folder = builtin.builtin_model_path(size="tiny")
        truncate_weights(folder)

    def build_while_another_finishes(config, staging):
        monkeypatch.setattr(builtin, "build", real_build)
        other = builtin.builtin_model_path(size="tiny")
        (other / "built by").write_text("the other builder")
        real_build(config, staging)

    monkeypatch.setattr(builtin, "build", build_while_another_finishes)
    folder = builtin.builtin_model_path(size="tiny")
    assert (folder / "built by").read_text() == "the other builder"
    assert_usable(folder)
