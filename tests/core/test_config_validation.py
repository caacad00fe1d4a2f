"""Every config key validated when the config is read (issue 15 case 6), one ConfigError naming each key."""

import numpy as np
import pytest

from tardiff_common.data.contract import SiteData
from tardiff_common.pipeline.config import RunConfig, preset
from tardiff_common.pipeline.config_errors import ConfigError
from tardiff_common.pipeline.validation import (
    check_against_data,
    check_sites,
    config_problems,
    refuse_unsupported,
    unsupported_options,
)


def problems_of(flat: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        RunConfig().with_overrides(flat)
    return {p.key: p.message for p in err.value.problems}


@pytest.mark.parametrize("name", ["tiny", "default", "paper"])
def test_presets_and_defaults_are_valid(name):
    assert config_problems(preset(name)) == []


@pytest.mark.parametrize("key, value, words", [
    ("diffusion.num-steps", -5, ">= 1, got -5"),
    ("diffusion.num-steps", 0, ">= 1, got 0"),
    ("sampling.num-inference-steps", 500, "at most diffusion.num-steps = 200"),
    ("sampling.num-inference-steps", 0, ">= 1"),
    ("threads", -3, ">= 1, got -3"),
    ("threads", 0, ">= 1, got 0"),
    ("classifier-train.epochs", 0, ">= 1"),
    ("diffusion-train.lr", 0.0, "> 0"),
    ("federation.diffusion-rounds", 0, ">= 1"),
    ("data.split-fractions", "0.5,0.5", "four numbers"),
    ("evaluation.tsrtr-ratios", "0.5,1.5", "(0, 1]"),
    ("sampling.sampler", "euler", "must be one of"),
    ("diffusion.schedule", "quadratic", "must be one of"),
    ("device", "gpu7", "'cuda:<index>'"),
])
def test_out_of_range_values_name_their_key(key, value, words):
    found = problems_of({key: value})
    assert list(found) == [key] and words in found[key]


def test_wrong_types_name_the_key():
    found = problems_of({"diffusion.num-steps": "many", "output.resume": "perhaps", "seed": 1.5})
    assert found == {"diffusion.num-steps": "cannot read 'many' as int",
                     "output.resume": "cannot read 'perhaps' as bool", "seed": "cannot read 1.5 as int"}


def test_unknown_keys_suggest_close_matches():
    found = problems_of({"sampling.num-inference-step": 10})
    assert "did you mean 'sampling.num-inference-steps'" in found["sampling.num-inference-step"]


def test_every_problem_is_listed_at_once():
    flat = {"diffusion.num-steps": -5, "threads": 0, "guidance.scael": 1, "classifier.hidden": "big",
            "guidance.tuning-ratio": 0, "federation.max-retries": -1}
    with pytest.raises(ConfigError) as err:
        RunConfig().with_overrides(flat)
    assert sorted(err.value.keys) == sorted(flat)
    for key in flat:
        assert key in str(err.value)


def test_inference_steps_may_exceed_num_steps_only_for_ddpm():
    config = RunConfig().with_overrides({"sampling.sampler": "ddpm",
                                         "diffusion.num-steps": 10})
    assert config.sampling.num_inference_steps > config.diffusion.num_steps  # DDPM runs all T steps


def test_min_sites_above_num_sites_is_refused():
    assert "federation.min-sites" in problems_of({"federation.num-sites": 2, "federation.min-sites": 3})


def test_target_epsilon_above_max_epsilon_is_refused_up_front():
    found = problems_of({"privacy.dp-sgd-classifier": True, "privacy.target-epsilon": 2.0,
                         "privacy.max-epsilon": 1.0})
    assert "above privacy.max-epsilon = 1" in found["privacy.target-epsilon"]


@pytest.mark.parametrize("dp", [{"privacy.gradient-sum-dp": True},
                                {"privacy.gradient-sum-dp": True, "privacy.dp-sgd-diffusion": True},
                                {"privacy.dp-sgd-classifier": True}], ids=["sum", "sum+dp-sgd", "dp-sgd"])
def test_unreachable_target_epsilon_is_refused_when_the_config_is_read(dp):
    found = problems_of({**dp, "privacy.target-epsilon": 1e-6})  # no data, no training: the solve alone
    assert "1e-06 cannot be reached" in found["privacy.target-epsilon"]


def test_a_data_free_plan_above_the_budget_is_refused_up_front():
    """Without DP-SGD the whole plan (phase-0 statistics, gradient sum) needs no data."""
    found = problems_of({"privacy.gradient-sum-dp": True, "privacy.noise-multiplier": 0.5,
                         "privacy.max-epsilon": 1.0})
    assert list(found) == ["privacy.max-epsilon"] and "the planned run spends epsilon" in found["privacy.max-epsilon"]


def test_reachable_target_epsilon_passes():
    config = RunConfig().with_overrides({"privacy.gradient-sum-dp": True, "privacy.target-epsilon": 1.0})
    assert config.privacy.target_epsilon == 1.0


@pytest.mark.parametrize("dp", [{"privacy.gradient-sum-dp": True}, {"privacy.dp-sgd-classifier": True},
                                {"privacy.dp-sgd-diffusion": True}], ids=["sum", "dp-sgd-classifier", "dp-sgd-diffusion"])
def test_prevalence_label_mode_is_refused_under_dp(dp):
    """The training split's exact positive rate would shape every released synthetic-set score."""
    found = problems_of({**dp, "privacy.noise-multiplier": 1.0, "privacy.sgd-noise-multiplier": 1.0,
                         "generation.label-mode": "prevalence"})
    assert list(found) == ["generation.label-mode"]
    assert "'balanced'" in found["generation.label-mode"]
    balanced = RunConfig().with_overrides({**dp, "privacy.noise-multiplier": 1.0, "privacy.sgd-noise-multiplier": 1.0,
                                           "generation.label-mode": "balanced"})
    assert balanced.generation.label_mode == "balanced"


def test_prevalence_label_mode_is_allowed_without_dp():
    assert RunConfig().with_overrides({"generation.label-mode": "prevalence"}).generation.label_mode == "prevalence"


def _site(name: str, n: int, channels: int) -> SiteData:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    return SiteData(name=name, x=rng.normal(size=(n, channels, 16)).astype(np.float32),
                    mask=np.ones((n, channels, 16), dtype=bool), y=y.astype(np.int64),
                    channels=tuple(f"c{i}" for i in range(channels)))


def test_in_channels_must_match_the_data_or_be_auto():
    assert RunConfig().unet.in_channels == "auto" and preset("paper").unet.in_channels == "auto"
    check_against_data(RunConfig(), channels=7, train_sizes={})  # auto: the U-Net takes the data's
    check_against_data(RunConfig().with_overrides({"unet.in-channels": 7}), channels=7, train_sizes={})
    for wrong in (5, 3):  # 3 is no longer a silent "default": on 7-channel data it is refused
        with pytest.raises(ConfigError, match=f"unet.in-channels: is {wrong} but the data has 7 channels; set 7 or auto"):
            check_against_data(RunConfig().with_overrides({"unet.in-channels": wrong}), channels=7, train_sizes={})
    assert "'auto' or a positive integer" in problems_of({"unet.in-channels": "three"})["unet.in-channels"]


def test_each_site_plan_is_checked_against_the_budget():
    config = RunConfig().with_overrides({"privacy.dp-sgd-classifier": True, "privacy.sgd-noise-multiplier": 1.5,
                                         "privacy.max-epsilon": 10.0})
    # epsilon ~6.7 at 10,000 records (the q = 1 selection and evaluation releases at sigma 1.5
    # dominate), ~17 at 20 (DP-SGD's sampling rate 1): only site 'b' is over the budget
    with pytest.raises(ConfigError, match="privacy.max-epsilon: the planned run spends epsilon .* at site 'b'"):
        check_against_data(config, channels=3, train_sizes={"a": 10_000, "b": 20})
    check_against_data(config, channels=3, train_sizes={"a": 10_000})
    solved = RunConfig().with_overrides({"privacy.dp-sgd-classifier": True, "privacy.target-epsilon": 3.0})
    check_against_data(solved, channels=3, train_sizes={"a": 50, "b": 200})


def test_check_sites_uses_the_loaded_channels_and_training_sizes():
    sites = [_site("a", 60, 3), _site("b", 80, 3)]
    check_sites(RunConfig(), sites, "federated")
    with pytest.raises(ConfigError, match="unet.in-channels"):
        check_sites(RunConfig().with_overrides({"unet.in-channels": 4}), sites, "centralized")
    over_budget = RunConfig().with_overrides({"privacy.dp-sgd-diffusion": True, "privacy.sgd-noise-multiplier": 0.5,
                                              "privacy.max-epsilon": 2.0})
    with pytest.raises(ConfigError, match="at site 'pooled'"):
        check_sites(over_budget, sites, "centralized")


def test_centralized_refuses_what_it_cannot_honour(monkeypatch):
    from tardiff_common.pipeline import centralized

    config = RunConfig().with_overrides({"privacy.dp-sgd-classifier": True, "privacy.gradient-sum-dp": True,
                                         "privacy.target-epsilon": 2.0, "privacy.secure-aggregation": True})
    assert unsupported_options(config, "federated") == []
    monkeypatch.setattr(centralized, "SUPPORTED_PRIVACY", (), raising=False)
    with pytest.raises(ConfigError) as err:
        refuse_unsupported(config, "centralized")
    assert set(err.value.keys) == {"privacy.dp-sgd-classifier", "privacy.gradient-sum-dp",
                                   "privacy.secure-aggregation"}
    monkeypatch.setattr(centralized, "SUPPORTED_PRIVACY", ("gradient_sum_dp", "dp_sgd_classifier"), raising=False)
    assert [p.key for p in unsupported_options(config, "centralized")] == ["privacy.secure-aggregation"]
    assert unsupported_options(RunConfig(), "centralized") == []
