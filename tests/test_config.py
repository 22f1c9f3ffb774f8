"""Config: the shipped file is complete and valid; mistakes fail at start naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clip_search.config import Settings, load_config
from clip_search.errors import ConfigError
from tests.conftest import ROOT


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _keys(value, dotted + ".")
        else:
            out.add(dotted)
    return out


def test_shipped_config_documents_every_setting_with_its_default():
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text())
    defaults = Settings().model_dump(mode="json")
    assert _keys(shipped) == _keys(defaults), "config.yaml and the settings model disagree"
    settings = load_config(ROOT / "config.yaml", env={})
    dumped = settings.model_dump(mode="json")
    dumped["data_dir"] = "data"
    assert dumped == dict(defaults, data_dir="data")
    text = (ROOT / "config.yaml").read_text()
    for key in _keys(shipped):
        leaf = key.rsplit(".", 1)[-1]
        line_no = next(i for i, line in enumerate(text.splitlines()) if line.strip().startswith(f"{leaf}:"))
        assert text.splitlines()[line_no - 1].strip().startswith("#"), f"{key} has no comment above it"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("search:\n  default_k: ten\n", "search.default_k"),
        ("search:\n  deafult_k: 3\n", "unknown setting 'search.deafult_k'"),
        ("model:\n  device: gpu\n", "model.device"),
        ("storage:\n  s3:\n    presign_expiry_s: 999999999\n", "storage.s3.presign_expiry_s"),
        ("search:\n  default_k: 500\n", "search.default_k"),
        ("- just\n- a list\n", "mapping"),
        ("model: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, yaml_text: str, message: str):
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(path, env={})


def test_environment_overrides(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  id: some/model\n")
    settings = load_config(path, env={"CLIP_SEARCH_MODEL": "/models/x", "CLIP_SEARCH_DATA_DIR": str(tmp_path / "d")})
    assert settings.model.id == "/models/x"
    assert settings.data_dir == (tmp_path / "d").resolve()
    assert settings.storage_backend == "local"
    with_bucket = load_config(path, env={"S3_BUCKET": "photos"})
    assert with_bucket.storage_backend == "s3" and with_bucket.storage.s3.bucket == "photos"


def test_relative_data_dir_is_relative_to_the_config_file(tmp_path: Path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "config.yaml"
    path.write_text("data_dir: mydata\n")
    assert load_config(path, env={}).data_dir == (tmp_path / "conf" / "mydata").resolve()


def test_config_env_var_picks_the_file(tmp_path: Path):
    path = tmp_path / "other.yaml"
    path.write_text("search:\n  default_k: 3\n")
    assert load_config(env={"CLIP_SEARCH_CONFIG": str(path)}).search.default_k == 3
    with pytest.raises(ConfigError, match="not found"):
        load_config(env={"CLIP_SEARCH_CONFIG": str(tmp_path / "missing.yaml")})


def test_a_config_of_before_the_rename_still_loads(tmp_path: Path):
    """index.faiss_threads became index.search_threads: a user's config.yaml with the old name keeps its value."""
    path = tmp_path / "config.yaml"
    path.write_text("index:\n  faiss_threads: 2\n")
    assert load_config(path, env={}).index.search_threads == 2
