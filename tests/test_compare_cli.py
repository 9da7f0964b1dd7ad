"""compare.py's command line: every bad flag is a short usage error before any work starts
(nothing written), a documented flag works on its own, and --resume refuses other settings."""

import json

import pytest

from tests.conftest import load_script

SMOKE = ["--preset", "smoke", "--no-progress"]


@pytest.fixture
def compare(tmp_path, monkeypatch):
    """compare.py, with a private model cache: a check that wrongly passed must not build
    the built-in model in ~/.cache."""
    monkeypatch.setenv("TRICE_RL_CACHE", str(tmp_path / "cache"))
    return load_script("compare")


def usage_error(compare, flags, capsys) -> str:
    """The one error line of a refused command line (exit code 2)."""
    with pytest.raises(SystemExit) as exit_info:
        compare.main(flags)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and len(errors[0]) < 600, errors
    return errors[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--env-kwargs", "[40, 16]"], "argument --env-kwargs: expected an object such as"),
        (["--env-kwargs", '{"num_trian": 40}'], "unknown ArithmeticConfig fields ['num_trian']; valid:"),
        (["--env-kwargs", '{"num_train": -5}'], "num_train=-5: split sizes must be positive integers"),
        (["--env-kwargs", '{"num_test": 0}'], "num_test=0: split sizes must be positive integers"),
        (["--env", "trice_rl/GSM8K-v0", "--env-kwargs", '{"num_test": 5}'], "unexpected keyword argument 'num_test'; valid: data_dir"),
        (["--set", "lr=fast"], '--set lr="fast": lr takes a number'),
        (["--set", "batch_size=0"], "batch_size must be at least 1, got 0"),
        (["--set", "lr=-0.1"], "lr must be positive, got -0.1"),
        (["--set", "particels=4"], "--set particels: no selected algorithm has such a config field; fields: batch_size"),
        (["--seeds", "0,-1"], "--seeds must be distinct non-negative integers, got '0,-1'"),
        (["--model", "no/such/model"], "--model no/such/model: the folder does not exist"),
        (["--eval-examples", "0"], "--eval-examples must be a positive integer, got 0"),
        (["--eval-examples", "-3"], "--eval-examples must be a positive integer, got -3"),
        (["--majority-k", "-1"], "--majority-k must be 0 (off) or a positive integer, got -1"),
        (["--variance-every", "-2"], "--variance-every must be 0 (off) or a positive integer, got -2"),
        (["--device", "gpu0"], "--device 'gpu0' is not a torch device"),
    ],
)
def test_a_bad_flag_is_a_one_line_usage_error_before_any_work(compare, flags, message, tmp_path, capsys, data_dir):
    out = tmp_path / "out"
    assert message in usage_error(compare, [*SMOKE, *flags, "--out", str(out)], capsys)
    assert not out.exists()


def test_an_out_that_is_a_file_is_refused(compare, tmp_path, capsys):
    out = tmp_path / "results.csv"
    out.write_text("keep me")
    assert f"--out {out}: a file of that name exists" in usage_error(compare, [*SMOKE, "--out", str(out)], capsys)
    assert out.read_text() == "keep me"


def test_a_relative_model_path_that_does_not_exist_is_not_taken_for_a_hub_id(compare, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert "--model models/mine: the folder does not exist" in usage_error(compare, [*SMOKE, "--model", "models/mine", "--out", "out"], capsys)
    assert not (tmp_path / "out").exists()


def test_an_empty_model_folder_is_refused(compare, tmp_path, capsys):
    (tmp_path / "model").mkdir()
    error = usage_error(compare, [*SMOKE, "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out")], capsys)
    assert "the folder holds no config.json" in error
    assert not (tmp_path / "out").exists()


def test_a_bbh_task_without_data_says_how_to_supply_it(compare, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TRICE_RL_DATA", raising=False)
    monkeypatch.setenv("TRICE_RL_DATA_URL", "http://127.0.0.1:9")  # offline: refused at once
    error = usage_error(compare, [*SMOKE, "--env", "trice_rl/BBH-navigate-v0", "--out", str(tmp_path / "out")], capsys)
    assert "--env trice_rl/BBH-navigate-v0: could not download bbh/navigate.json" in error
    assert "data_dir" in error and "TRICE_RL_DATA" in error
    assert not (tmp_path / "out").exists()


def test_another_env_gets_its_own_defaults_not_the_presets_task_sizes(compare, data_dir):
    args = compare.parse_args(["--env", "trice_rl/GSM8K-v0"])
    assert args.env_kwargs == {}
    assert len(args.task.examples("test")) == 1319
    smoke = compare.parse_args([*SMOKE])
    assert smoke.env_kwargs == compare.PRESETS["smoke"]["env_kwargs"] and len(smoke.task.examples("train")) == 40


def test_resume_refuses_other_settings_and_names_each(compare, tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")]
    compare.write_config(compare.parse_args([*SMOKE, "--algos", "trice", *out]))
    recorded = (tmp_path / "run" / "config.json").read_text()
    other = ["--set", "lr=0.5", "--env-kwargs", '{"num_train": 41, "num_test": 16}']
    error = usage_error(compare, [*SMOKE, "--algos", "trice", *other, *out, "--resume"], capsys)
    assert "algorithm_configs.trice.lr: 0.0001 → 0.5" in error and "env_kwargs.num_train: 40 → 41" in error
    assert "num_test" not in error and (tmp_path / "run" / "config.json").read_text() == recorded
    # What cannot change a run's numbers may differ (here: the progress bar).
    assert compare.parse_args(["--preset", "smoke", "--algos", "trice", *out, "--resume"]).resume
    assert json.loads(recorded)["algorithm_configs"]["trice"]["lr"] == 1e-4
