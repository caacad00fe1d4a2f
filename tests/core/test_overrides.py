"""``--set key=value``: TOML typing as ``flwr run --run-config``, bare text otherwise."""

import argparse

import pytest

from tardiff_common.pipeline.config import RunConfig
from tardiff_common.pipeline.config_errors import ConfigError
from tardiff_common.pipeline.overrides import close_keys, parse_sets, parse_value, threads_arg, toml_value


@pytest.mark.parametrize("text, expected", [
    ('"my run"', "my run"),            # double quotes stripped (tardiff --set used to keep them)
    ("'my run'", "my run"),            # TOML literal string
    ('"50"', "50"),                    # a quoted number stays text
    ("50", 50), ("-5", -5), ("0.5", 0.5), ("1e-6", 1e-6),
    ("true", True), ("false", False),
    ("[1, 2, 4]", [1, 2, 4]),          # TOML array
    ("1,2,4", "1,2,4"),                # pyproject's tuple spelling: text, typed by the config
    ("none", "none"),                  # TOML has no null: text, read as None by optional fields
    ("../data/eicu", "../data/eicu"),  # not TOML: the bare text
    ("paper:10,x0:0.1", "paper:10,x0:0.1"),
    ("2024-01-01", "2024-01-01"),      # a TOML date is no config type: the text
    ("  spaced  ", "spaced"),
])
def test_values_are_read_with_toml_rules(text, expected):
    value = parse_value(text)
    assert value == expected and type(value) is type(expected)


def test_quotes_tuples_and_none_reach_the_config_typed():
    flat = parse_sets(['output.name="my run"', "unet.dim-mults=[1,2,4]", "evaluation.seeds=0,1",
                       "sampling.clip-x0=none", "guidance.target-class=1", "data.size-scale=2",
                       "output.resume=true"])
    config = RunConfig().with_overrides(flat)
    assert config.output.name == "my run"
    assert config.unet.dim_mults == (1, 2, 4) and config.evaluation.seeds == (0, 1)
    assert config.sampling.clip_x0 is None and config.guidance.target_class == 1
    assert config.data.size_scale == 2.0 and isinstance(config.data.size_scale, float)
    assert config.output.resume is True


def test_toml_value_round_trips_through_the_parser():
    for value in (True, 3, 0.25, 1e-5, "x y", "a\"b", "1,2,4"):
        assert parse_value(toml_value(value)) == value
    assert toml_value((1, 2, 4)) == '"1,2,4"'


def test_malformed_items_are_refused_naming_each():
    with pytest.raises(ConfigError) as err:
        parse_sets(["guidance.scale", "=5", "seed=1"])
    assert [p.key for p in err.value.problems] == ["guidance.scale", "=5"]
    assert "expects key=value" in str(err.value)


def test_last_of_a_repeated_key_wins():
    assert parse_sets(["seed=1", "seed=2"]) == {"seed": 2}


def test_close_keys_suggest_the_misspelt_key():
    known = RunConfig().to_flat()
    assert close_keys("guidance.scael", known)[0] == "guidance.scale"
    assert "diffusion.num-steps" in close_keys("diffusion.num-step", known)
    assert "guidance.scale" in close_keys("scale", known)  # the right field in another section
    assert close_keys("zzzz", known) == []


@pytest.mark.parametrize("text", ["0", "-3", "two"])
def test_threads_flag_refuses_non_positive(text):
    with pytest.raises(argparse.ArgumentTypeError, match=">= 1"):
        threads_arg(text)
    assert threads_arg("2") == 2
