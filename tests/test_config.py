import pytest

from digitcnn.config import RunConfig, config_from_args, load_toml
from digitcnn.errors import ConfigError


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
    assert (config.epochs, config.batch_size, config.scaler, config.shuffle) == (5, 32, "global", False)


def test_config_is_frozen():
    with pytest.raises(Exception):
        RunConfig().epochs = 3


@pytest.mark.parametrize("changes, message", [
    ({"folds": 1}, r"--folds 1 is too small; it must be at least 2 .*--cv writers"),
    ({"epochs": 0}, r"--epochs 0 is too small"),
    ({"scaler": "minmax"}, r"--scaler 'minmax' is not valid; choose one of: standard, global"),
    ({"lr": 0.0}, r"--lr 0.0 must be positive"),
    ({"gamma": 1.5}, r"--gamma 1.5 must be in \(0, 1\]"),
    ({"dropout": 1.0}, r"--dropout 1.0 must be in \[0, 1\)"),
    ({"limit": 1}, r"--limit 1 must be at least 2"),
])
def test_invalid_settings(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes)


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
    assert err.count("\n") == 1 and "invalid int value: 'four'" in err
