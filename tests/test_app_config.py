"""pyproject's [tool.flwr.app.config] names every RunConfig knob, and only those."""

import tomllib
from flwr.common.config import flatten_dict

from tardiff_common.pipeline.config import RunConfig

from .conftest import REPO_ROOT

# values the simulation sets on purpose (one torch thread per client; three hospitals)
SIMULATION_OVERRIDES = {"threads": 1, "federation.num-sites": 3}


def app_config() -> dict:
    with open(REPO_ROOT / "pyproject.toml", "rb") as fh:
        return flatten_dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def test_every_knob_is_in_pyproject_and_nothing_else():
    assert set(app_config()) == set(RunConfig().to_flat())


def test_pyproject_values_are_the_typed_defaults():
    config = RunConfig().with_overrides(app_config())
    expected = RunConfig().with_overrides(SIMULATION_OVERRIDES)
    assert config == expected


def test_components_point_at_the_apps():
    with open(REPO_ROOT / "pyproject.toml", "rb") as fh:
        app = tomllib.load(fh)["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}
    assert "federations" not in tomllib.load(open(REPO_ROOT / "pyproject.toml", "rb"))["tool"]["flwr"]
