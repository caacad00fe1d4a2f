import pytest

from tardiff_common.pipeline.config import PRESETS, RunConfig, derive_seed, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_flat_round_trip(name):
    config = preset(name)
    assert RunConfig().with_overrides(config.to_flat()) == config


def test_overrides_are_typed():
    config = RunConfig().with_overrides({
        "guidance.scale": "50", "unet.dim-mults": "1,2,4", "unet.attention-levels": "2",
        "guidance.target-class": "1", "sampling.clip-x0": "none", "evaluation.seeds": "0,1,2",
        "classifier.bidirectional": "false", "seed": 7,
    })
    assert config.guidance.scale == 50.0 and config.unet.dim_mults == (1, 2, 4)
    assert config.guidance.target_class == 1 and config.sampling.clip_x0 is None
    assert config.evaluation.seeds == (0, 1, 2) and config.classifier.bidirectional is False and config.seed == 7


@pytest.mark.parametrize("key, value, message", [
    ("guidance.scal", 1, "unknown config key 'guidance.scal'"),
    ("nosection.x", 1, "unknown config key"),
    ("guidance", 1, "names a section"),
    ("guidance.scale", "big", "guidance.scale must be a number >= 0 or 'auto', got 'big'"),
    ("classifier.hidden", "big", "cannot read 'big'"),
    ("classifier.hidden", 2.5, "cannot read 2.5"),
    ("guidance.form", "other", "unknown guidance form"),
])
def test_bad_overrides_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        RunConfig().with_overrides({key: value})


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, 1, r, k) for r in range(5) for k in range(5)}) == 25


def test_phase_timeouts_override_the_round_timeout_per_phase():
    from tardiff_common.pipeline.config import RunConfig

    fed = RunConfig().with_overrides({"federation.round-timeout-s": 60.0,
                                      "federation.phase-timeouts": "generation=3600, diffusion=1800"}).federation
    assert fed.timeout_for("generation") == 3600 and fed.timeout_for("diffusion") == 1800
    assert fed.timeout_for("classifier") == 60.0
    for bad, match in (("sampling=10", "phase"), ("generation", "phase"), ("generation=-5", "seconds > 0"),
                       ("generation=soon", "seconds > 0")):
        with pytest.raises(ValueError, match=match):
            RunConfig().with_overrides({"federation.phase-timeouts": bad})
