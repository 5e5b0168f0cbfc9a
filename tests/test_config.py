import dataclasses
import re
from pathlib import Path

import pytest

from semwatch.config import (
    Config,
    ConfigError,
    find_config_file,
    load_config,
    load_config_file,
    resolve_paths,
)

ROOT_CONFIG = Path(__file__).resolve().parents[1] / "config.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_documented_file_matches_builtin_defaults():
    config = load_config_file(ROOT_CONFIG)
    defaults = resolve_paths(Config(), ROOT_CONFIG.parent)
    assert dataclasses.replace(config, source=None) == defaults


def test_every_key_in_the_documented_file_has_a_comment():
    lines = ROOT_CONFIG.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_]+\s*=", line):
            assert lines[i - 1].startswith("#"), f"config.toml: {line!r} has no comment above it"


def test_every_dataclass_key_is_in_the_documented_file():
    text = ROOT_CONFIG.read_text()
    for section in dataclasses.fields(Config):
        if section.name == "source":
            continue
        assert f"[{section.name}]" in text
        for key in dataclasses.fields(section.default_factory()):
            assert re.search(rf"^{key.name}\s*=", text, re.M), f"{section.name}.{key.name} undocumented"


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "[watch]\nsettle_secs = 3\n")
    with pytest.raises(ConfigError) as err:
        load_config_file(path)
    assert "watch.settle_secs" in str(err.value) and str(path) in str(err.value)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section \[wacth\]"):
        load_config_file(write(tmp_path, "[wacth]\n"))


@pytest.mark.parametrize(
    "text, key",
    [
        ("[watch]\nsettle_seconds = 'soon'\n", "watch.settle_seconds = 'soon'"),
        ("[watch]\nrecursive = 1\n", "watch.recursive = 1"),
        ("[output]\nformat = 'gif'\n", "output.format = 'gif'"),
        ("[engine]\nbatch_size = 0\n", "engine.batch_size = 0"),
        ("[engine]\nchroma_size = 500\n", "engine.chroma_size = 500"),
        ("[queue]\nmax_attempts = 2.5\n", "queue.max_attempts = 2.5"),
        ("[engine]\nprecision = 'fp8'\n", "engine.precision = 'fp8'"),
        ("[engine]\nchannels_last = 'yes'\n", "engine.channels_last = 'yes'"),
    ],
)
def test_bad_values_name_key_value_and_file(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config_file(path)
    assert key in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(write(tmp_path, "[watch\n"))


def test_relative_paths_are_relative_to_the_file(tmp_path):
    sub = tmp_path / "etc"
    sub.mkdir()
    path = sub / "c.toml"
    path.write_text(
        '[watch]\ninput_dir = "in"\n[output]\ndir = "/abs/out"\n'
        '[queue]\ndatabase_url = "sqlite:///state/q.db"\n[engine]\nmodel = "m.safetensors"\n'
    )
    config = load_config_file(path)
    assert config.watch.input_dir == sub / "in"
    assert config.output.dir == Path("/abs/out")
    assert config.queue.database_url == f"sqlite:///{sub}/state/q.db"
    assert config.engine.model == sub / "m.safetensors"


def test_empty_model_means_bundled_default(tmp_path):
    assert load_config_file(write(tmp_path, '[engine]\nmodel = ""\n')).engine.model is None


def test_postgres_url_untouched(tmp_path):
    url = "postgresql://semwatch@db/semwatch"
    config = load_config_file(write(tmp_path, f'[queue]\ndatabase_url = "{url}"\n'))
    assert config.queue.database_url == url


def test_lookup_order(tmp_path, monkeypatch):
    explicit = write(tmp_path, "")
    env_file = tmp_path / "env.toml"
    env_file.write_text("")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "config.toml").write_text("[engine]\nbatch_size = 7\n")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("SEMWATCH_CONFIG", str(env_file))
    assert find_config_file(explicit) == explicit
    assert find_config_file(None) == env_file
    monkeypatch.delenv("SEMWATCH_CONFIG")
    assert find_config_file(None) == Path("config.toml")
    assert load_config(None).engine.batch_size == 7


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        find_config_file(tmp_path / "nope.toml")


def test_engine_precision_and_layout_keys(tmp_path):
    engine = load_config_file(write(tmp_path, '[engine]\nprecision = "fp32"\nchannels_last = false\n')).engine
    assert (engine.precision, engine.channels_last) == ("fp32", False)
    engine = load_config_file(write(tmp_path, '[engine]\nchannels_last = "auto"\n')).engine
    assert (engine.precision, engine.channels_last) == ("auto", "auto")


def test_engine_cache_dir_defaults_to_the_state_folder(tmp_path):
    config = load_config_file(write(tmp_path, '[daemon]\nstate_dir = "/srv/state"\n'))
    assert config.engine.cache_dir == Path("/srv/state/engines")
    config = load_config_file(write(tmp_path, '[engine]\ncache_dir = "trt"\n'))
    assert config.engine.cache_dir == tmp_path / "trt"


def _bounded_keys() -> list[tuple[str, str, float, str]]:
    """(section, key, a value just outside its bounds, the text the error must carry)."""
    out = []
    for section in dataclasses.fields(Config):
        if section.name == "source":
            continue
        for key in dataclasses.fields(section.default_factory):
            bounds = key.metadata.get("bounds")
            if bounds is None:
                continue
            integer = isinstance(key.default, int)
            if bounds.low is not None:
                value = bounds.low if bounds.low_open else bounds.low - 1
                out.append((section.name, key.name, int(value) if integer else float(value), "must be "))
            if bounds.high is not None:
                value = bounds.high if bounds.high_open else bounds.high + 1
                out.append((section.name, key.name, int(value) if integer else float(value), "must be "))
    return out


@pytest.mark.parametrize("section, key, value, text", _bounded_keys())
def test_every_bound_beside_a_field_is_checked(tmp_path, section, key, value, text):
    path = write(tmp_path, f"[{section}]\n{key} = {value!r}\n")
    with pytest.raises(ConfigError) as err:
        load_config_file(path)
    assert f"{section}.{key} = {value!r}: {text}" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[engine]\nbatch_size = 0\n", "engine.batch_size = 0: must be > 0"),
        ("[watch]\nsettle_seconds = -1.0\n", "watch.settle_seconds = -1.0: must be >= 0"),
        ("[engine]\nchroma_size = 500\n", "must be a multiple of 32 (the generator's stride)"),
        ("[engine]\nregion_hue = 1.5\n", "engine.region_hue = 1.5: must be in [0, 1]"),
        ("[app]\nport = 70000\n", "app.port = 70000: must be 1-65535"),
        ("[output]\njpeg_quality = 0\n", "output.jpeg_quality = 0: must be 1-100"),
        ("[trainer]\nval_fraction = 1.0\n", "trainer.val_fraction = 1.0: must be in [0, 1)"),
        ("[trainer]\ncrop_min = 0.0\n", "trainer.crop_min = 0.0: must be in (0, 1]"),
        ("[trainer]\nhint_mean_points = 0.5\n", "trainer.hint_mean_points = 0.5: must be >= 1"),
        ("[trainer]\nlr_g = nan\n", "trainer.lr_g = nan: must be >= 0"),
        ("[app]\nhost = ''\n", "app.host = '': must not be empty"),
        ("[metrics]\nlisten = '9464'\n", "metrics.listen = '9464': expected \"host:port\""),
        ("[output]\nsidecars = ['.png']\n", "'.png' is an image suffix"),
    ],
)
def test_range_errors_say_what_is_allowed(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_config_file(write(tmp_path, text))
    assert message in str(err.value)
