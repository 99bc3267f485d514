import dataclasses
import math
import re
import subprocess
import sys
from dataclasses import fields

import pytest

from digitcnn.config import RunConfig, config_from_args, load_toml
from digitcnn.errors import ConfigError
from digitcnn.settings import SettingError, field_kind


def parse(argv):
    return config_from_args(argv, "prog", "test")


def test_defaults_are_s5():
    config = parse([])
    assert (config.dataset, config.model, config.folds, config.random_state) == ("uci", "s5", 4, 30)
    assert (config.epochs, config.batch_size, config.lr, config.gamma) == (10, 64, 1e-3, 0.7)
    assert config.scaler == "standard"


def test_toml_then_flags_override(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('epochs = 3\nbatch-size = 32\n[run]\nscaler = "global"\n')
    config = parse(["--config", str(path), "--epochs", "5", "--no-shuffle"])
    assert (config.epochs, config.batch_size, config.scaler, config.shuffle) == (
        5,
        32,
        "global",
        False,
    )


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"folds": 1}, r"folds=1 must be at least 2 \(K-fold needs two folds .*--cv writers"),
        ({"epochs": 0}, r"epochs=0 must be at least 1"),
        ({"scaler": "minmax"}, r"scaler='minmax' is not valid; choose one of: standard, global"),
        ({"lr": 0.0}, r"lr=0.0 must be positive"),
        ({"gamma": 1.5}, r"gamma=1.5 must be in \(0, 1\]"),
        ({"dropout": 1.0}, r"dropout=1.0 must be in \[0, 1\)"),
        ({"limit": 1}, r"limit=1 must be at least 2"),
        ({"nesterov": True}, r"nesterov=True needs optimizer 'sgd' and a positive momentum"),
        ({"cv": "full", "early_stopping": True}, r"cv='full' leaves no validation rows"),
    ],
)
def test_invalid_settings_name_the_setting(changes, message):
    with pytest.raises(SettingError, match=f"^{message}") as caught:
        RunConfig(**changes)
    # the command line words the same error with the flag
    name = caught.value.name
    assert caught.value.cli_message() == str(caught.value).replace(
        f"{name}=", f"--{name.replace('_', '-')} "
    )


def test_unknown_toml_key_and_bad_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("epoch = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml: unknown setting\(s\) epoch"):
        parse(["--config", str(path)])
    path.write_text("epochs = \n")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML"):
        load_toml(path)
    with pytest.raises(ConfigError, match=r"missing.toml: config file not found"):
        load_toml(tmp_path / "missing.toml")


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["--folds", "four"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "argument --folds: 'four' is not a whole number; give a whole number such as 3" in err


# ----------------------------------------------------------------------------- value types

FLOAT_FIELDS = [f for f in fields(RunConfig) if field_kind(f)[0] is float]


def test_float_fields_are_found():
    names = {f.name for f in FLOAT_FIELDS}
    assert {
        "lr",
        "dropout",
        "gamma",
        "momentum",
        "weight_decay",
        "label_smoothing",
        "val_fraction",
        "min_delta",
        "plateau_factor",
        "min_lr",
        "rotation",
    } <= names


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("setting", FLOAT_FIELDS, ids=lambda f: f.name)
def test_non_finite_float_settings_are_refused(setting, value, tmp_path):
    flag = setting.name.replace("_", "-")
    text = {math.inf: "inf", -math.inf: "-inf"}.get(value, "nan")
    with pytest.raises(
        SettingError,
        match=rf"^{setting.name}={text} is not a finite number; "
        r"give a finite value \(default .*\)$",
    ):
        RunConfig(**{setting.name: value})
    with pytest.raises(SettingError) as caught:
        parse([f"--{flag}={text}"])
    assert caught.value.cli_message().startswith(f"--{flag} {text} is not a finite number")
    path = tmp_path / "run.toml"
    path.write_text(f"{flag} = {text}\n")
    with pytest.raises(
        ConfigError,
        match=rf"run\.toml: {setting.name} = {text} is not a finite "
        "number",
    ):
        parse(["--config", str(path)])


@pytest.mark.parametrize(
    "line, message",
    [
        (
            'hflip = "false"',
            r"hflip = 'false' is not true or false but text; give true or false "
            r"\(in TOML without quotes\)",
        ),
        ('plots = "false"', r"plots = 'false' is not true or false but text"),
        ("shuffle = 0", r"shuffle = 0 is not true or false but a whole number"),
        (
            "epochs = true",
            r"epochs = True is not a whole number but a boolean; give a whole number",
        ),
        ("epochs = 2.5", r"epochs = 2\.5 is not a whole number but a number"),
        ('lr = "0.01"', r"lr = '0\.01' is not a number but text; give a number such as 0\.5"),
        ("model = 5", r"model = 5 is not text but a whole number; give text \(in TOML in quotes"),
        ("folds = [4]", r"folds = \[4\] is not a whole number but a list"),
        (
            "data-dir = 2024-01-01",
            r"data_dir = datetime\.date\(2024, 1, 1\) is not text but a date",
        ),
        ("run = 3", r"run = 3 is not a table; put settings at the top level or under a \[run\]"),
    ],
)
def test_toml_values_of_the_wrong_type_are_refused(tmp_path, line, message):
    path = tmp_path / "run.toml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=rf"run\.toml: {message}"):
        load_toml(path)


def test_wrong_toml_type_is_reported_even_when_a_flag_overrides_it(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('lr = "fast"\nhflip = "false"\n')
    with pytest.raises(ConfigError, match=r"run\.toml: lr = 'fast' is not a number"):
        parse(["--config", str(path), "--lr", "0.01", "--no-hflip"])


def test_toml_types_are_narrowed(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("lr = 1\nhflip = false\nplots = false\nepochs = 3\n")
    config = parse(["--config", str(path)])
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.hflip is False and config.plots is False and config.epochs == 3


def test_python_values_are_checked_and_narrowed(tmp_path):
    import numpy as np

    config = RunConfig(epochs=np.int64(3), lr=np.float32(0.5), data_dir=tmp_path)
    assert (type(config.epochs), type(config.lr), config.data_dir) == (int, float, str(tmp_path))
    with pytest.raises(ConfigError, match=r"^hflip='false' is not true or false but text"):
        RunConfig(hflip="false")
    with pytest.raises(ConfigError, match=r"^epochs=None is not a whole number but empty"):
        RunConfig(epochs=None)
    with pytest.raises(ConfigError, match=r"^lr=(10\*\*400|1000)"):
        RunConfig(lr=10**400)


@pytest.mark.parametrize("how", ["flag", "toml"])
def test_cli_refuses_nan_lr_with_one_line(tmp_path, how):
    path = tmp_path / "run.toml"
    path.write_text("lr = nan\n")
    argv = ["--lr", "nan"] if how == "flag" else ["--config", str(path)]
    done = subprocess.run(
        [sys.executable, "-m", "digitcnn.kfold", *argv, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1
    where = "--lr nan" if how == "flag" else f"{path}: lr = nan"
    assert done.stderr.startswith(f"digitcnn.kfold: error: {where} is not a finite number")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- diverging runs


@pytest.mark.parametrize(
    "mode",
    [["--workers", "1"], ["--workers", "2"], ["--fold-parallel"]],
    ids=["in-turn", "fold-processes", "fold-parallel"],
)
def test_run_whose_loss_turns_nan_is_stopped(optdigits_dir, tmp_path, mode):
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "digitcnn.kfold",
            "--data-dir",
            str(optdigits_dir),
            "--no-verify",
            "--folds",
            "2",
            "--epochs",
            "2",
            "--optimizer",
            "sgd",
            "--momentum",
            "0.9",
            "--lr",
            "1e6",
            "--quiet",
            "--out",
            str(out),
            *mode,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert re.match(
        r"digitcnn\.kfold: error: fold [01], epoch 1: the (training|validation) loss is nan: "
        r"training diverged, so the run is stopped and no results are written; "
        r"lower --lr \(now 1e\+06; try a tenth\), or check --momentum, --scheduler "
        r"and --scaler \(now 0\.9, step, standard\)$",
        done.stderr,
    ), done.stderr
    assert not (out / "metrics.json").exists()


def test_diverging_fold_raises_from_the_python_api(optdigits_dir):
    from digitcnn.cv.runner import load_for_config, run_kfold

    config = RunConfig(
        data_dir=str(optdigits_dir),
        verify=False,
        folds=2,
        epochs=1,
        lr=1e6,
        optimizer="sgd",
        momentum=0.9,
        quiet=True,
        workers=1,
    )
    with pytest.raises(
        ConfigError, match=r"fold 0, epoch 1: the (training|validation) loss is nan"
    ):
        run_kfold(load_for_config(config), config)


def test_every_setting_has_a_role_and_the_lists_follow_from_them():
    from digitcnn import config, settings

    assert {f.metadata["role"] for f in fields(RunConfig)} <= set(settings.ROLES)
    assert set(config.PRESENTATION_KEYS) == {
        "out",
        "quiet",
        "plots",
        "threads",
        "workers",
        "save_models",
        "checkpoint_every",
        "checkpoint_seconds",
        "keep_checkpoints",
        "track",
        "mlflow_uri",
        "experiment",
    }
    assert config.SPLIT_KEYS == (
        "dataset",
        "data_dir",
        "split",
        "verify",
        "limit",
        "cv",
        "val_fraction",
        "folds",
        "shuffle",
        "random_state",
    )
    assert set(config.NOT_SWEEPABLE) == {
        *config.SPLIT_KEYS,
        *("out", "quiet", "plots", "track", "mlflow_uri", "experiment"),
    }
    assert set(config.BASELINE_SETTINGS) == {*config.SPLIT_KEYS, "seed", "out", "plots", "quiet"}
    with pytest.raises(ValueError, match="unknown role"):
        settings.settings_with_role(RunConfig, "presentation")
    assert settings.flag_name("test_batch_size") == "test-batch-size"
