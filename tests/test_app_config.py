"""pyproject's [tool.flwr.app.config] is generated from RunConfig: one source of defaults."""

import dataclasses
import shutil

import tomllib
from flwr.common.config import flatten_dict

from tardiff_common.pipeline.app_config import APP_OVERRIDES, app_config_defaults, sync_pyproject
from tardiff_common.pipeline.config import RunConfig

from .conftest import REPO_ROOT


def app_config(path=REPO_ROOT / "pyproject.toml") -> dict:
    with open(path, "rb") as fh:
        return flatten_dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def test_every_knob_is_in_pyproject_and_nothing_else():
    assert set(app_config()) == set(RunConfig().to_flat())


def test_pyproject_values_are_the_typed_defaults():
    assert RunConfig().with_overrides(app_config()) == RunConfig().with_overrides(APP_OVERRIDES)


def test_pyproject_is_exactly_the_generated_table(tmp_path):
    """Fails on any disagreement, even a spelling (0.001 vs 1e-3); fix: python scripts/sync_app_config.py."""
    copy = tmp_path / "pyproject.toml"
    shutil.copy(REPO_ROOT / "pyproject.toml", copy)
    assert sync_pyproject(copy, check=True), "pyproject.toml is out of date: run python scripts/sync_app_config.py"


def test_a_disagreement_is_found_and_regenerated(tmp_path):
    copy = tmp_path / "pyproject.toml"
    text = (REPO_ROOT / "pyproject.toml").read_text()
    copy.write_text(text.replace("num-inference-steps = 25", "num-inference-steps = 50"))
    assert app_config(copy)["sampling.num-inference-steps"] == 50
    assert not sync_pyproject(copy, check=True)
    assert app_config(copy)["sampling.num-inference-steps"] == 50  # --check never writes
    assert not sync_pyproject(copy)
    assert copy.read_text() == text and sync_pyproject(copy, check=True)


def test_run_sections_default_to_their_dataclass_defaults():
    """No second set of defaults hidden in RunConfig: each section is its dataclass's default."""
    config = RunConfig()
    differ = [f.name for f in dataclasses.fields(config)
              if dataclasses.is_dataclass(getattr(config, f.name)) and getattr(config, f.name) != type(getattr(config, f.name))()]
    assert differ == []
    assert app_config_defaults()["sampling.num-inference-steps"] == 25


def test_components_point_at_the_apps():
    with open(REPO_ROOT / "pyproject.toml", "rb") as fh:
        tool = tomllib.load(fh)["tool"]
    assert tool["flwr"]["app"]["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}
    assert "federations" not in tool["flwr"]


def test_flower_runtime_installation_installs_none_of_the_dependencies():
    """`flwr run .` lets Flower `uv sync` this pyproject into a fresh per-run environment; every
    dependency (extras included) must be excluded there, so the app runs on the environment that
    holds the project (a new dependency not listed in [tool.uv] exclude-dependencies fails here)."""
    import re

    with open(REPO_ROOT / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)
    deps = list(project["project"]["dependencies"])
    for extra in project["project"].get("optional-dependencies", {}).values():
        deps += extra

    def name(req: str) -> str:
        return re.split(r"[\s\[<>=!~;@]", req, maxsplit=1)[0].lower().replace("_", "-")

    excluded = {name(d) for d in project["tool"]["uv"]["exclude-dependencies"]}
    assert {name(d) for d in deps} <= excluded
