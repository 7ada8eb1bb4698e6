"""Config loading: the written-out defaults, type coercion, and one message per rule."""

from dataclasses import fields, replace
from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    FLAGS,
    JobConfig,
    coerce,
    load_config,
    parse_degradation,
    parse_frames,
    resolve_model_defaults,
    validate,
)
from pipeline.errors import UserError
from pipeline.models import MODELS

pytestmark = pytest.mark.unit

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_default_yaml_is_the_dataclass_defaults_written_out():
    written = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    defaults = JobConfig().to_dict()
    assert list(written) == list(defaults)
    for section, values in defaults.items():
        assert list(written[section]) == list(values), section
        for key, value in values.items():
            got = written[section][key]
            assert (got, type(got)) == (value, type(value)), f"{section}.{key}"
    assert load_config(CONFIGS / "default.yaml") == JobConfig()


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_presets_load(preset):
    load_config(CONFIGS / preset)


def test_every_field_type_takes_its_default():
    cfg = JobConfig()
    for section in fields(JobConfig):
        sub = getattr(cfg, section.name)
        for f in fields(sub):
            load_config(set_items=[f"{section.name}.{f.name}={_as_yaml(getattr(sub, f.name))}"])


def _as_yaml(value):
    return yaml.safe_dump(value).removesuffix("\n...\n").strip()


def test_coercion_follows_the_field_types():
    cfg = load_config(
        overrides={"run.gpus_per_actor": 2},
        set_items=[
            "store.keep=true",
            "model.scale=2",
            "run.term_grace_s=3",
            "video.crf=",
            "video.preset=null",
            "model.device=0",
        ],
    )
    assert cfg.store.keep is True
    assert cfg.model.scale == 2
    assert (cfg.run.term_grace_s, type(cfg.run.term_grace_s)) == (3.0, float)
    assert (cfg.run.gpus_per_actor, type(cfg.run.gpus_per_actor)) == (2.0, float)
    assert cfg.video.crf is None and cfg.video.preset is None
    assert cfg.model.device == "0"


def test_weights_flag_sets_model_weights(tmp_path):
    from pipeline.cli.arguments import build_parser, job_overrides

    args = build_parser().parse_args(["in.png", "-o", "out.png", "--weights", str(tmp_path)])
    assert load_config(None, job_overrides(args)).model.weights == str(tmp_path)


@pytest.mark.parametrize(
    "item, message",
    [
        ("store.keep=1", "config store.keep (--keep-store) must be true or false, got 1"),
        ("model.scale=2.5", "config model.scale (--scale) must be an integer, got 2.5"),
        ("model.scale=true", "config model.scale (--scale) must be an integer, got True"),
        ("tiling.tile_px=abc", "config tiling.tile_px (--tile) must be an integer, got 'abc'"),
        ("run.term_grace_s=false", "config run.term_grace_s must be a number, got False"),
        ("model.scale=", "config model.scale (--scale) cannot be empty"),
        ("model.name=[a, b]", "config model.name (--model) must be a single value"),
        ("tiling.bogus=1", "unknown config key tiling.bogus; known keys in tiling: tile_px,"),
        ("bogus.key=1", "unknown config section 'bogus'; known sections: model, tiling,"),
        ("model.scale", "--set expects section.key=value"),
    ],
)
def test_coercion_refusals_name_the_key(item, message):
    with pytest.raises(UserError) as err:
        load_config(set_items=[item])
    assert message in str(err.value)


def test_tuples_and_optionals_coerce_from_their_types():
    assert coerce("a.b", [1, 2], tuple[int, int]) == (1, 2)
    assert coerce("a.b", "0.5,1", tuple[float, ...]) == (0.5, 1.0)
    assert coerce("a.b", (3,), tuple[int, ...]) == (3,)
    assert coerce("a.b", None, tuple[int, int] | None) is None
    assert coerce("a.b", 4, int | None) == 4
    with pytest.raises(UserError, match=r"config a\.b must hold 2 values"):
        coerce("a.b", [1, 2, 3], tuple[int, int])
    with pytest.raises(UserError, match=r"config a\.b\[1\] must be an integer"):
        coerce("a.b", "1,x", tuple[int, ...])
    with pytest.raises(UserError, match=r"config a\.b must be a list"):
        coerce("a.b", 5, tuple[int, ...])
    with pytest.raises(TypeError, match="unsupported field type"):
        coerce("a.b", 5, int | str)


def test_every_flag_names_a_config_key_and_a_cli_option():
    from pipeline.cli.main import build_parser

    options = {s for a in build_parser()._actions for s in a.option_strings}
    defaults = JobConfig().to_dict()
    for key, flag in FLAGS.items():
        section, name = key.split(".")
        assert name in defaults[section], key
        assert flag in options, flag


@pytest.mark.parametrize(
    "item, message",
    [
        ("model.name=nope", "model.name (--model) names an unknown model 'nope'; available:"),
        ("model.scale=0", "model.scale (--scale) must be between 1 and 16, got 0"),
        ("model.batch_size=0", "model.batch_size (--batch-size) must be at least 1, got 0"),
        ("model.color_fix=x", "model.color_fix must be one of wavelet, adain, none, got 'x'"),
        ("model.precision=fp8", "model.precision must be one of auto, fp32, bf16, fp16"),
        ("model.degradation=0.3", "model.degradation expects two numbers in [0,1]"),
        ("model.degradation=0.3,2", "model.degradation scores must lie in [0,1]"),
        ("model.degradation_window=-1", "model.degradation_window must be >= 0, got -1"),
        ("tiling.window=box", "tiling.window must be one of gaussian, cosine, got 'box'"),
        ("tiling.tile_px=4", "tiling.tile_px (--tile) must be at least 8 input pixels, got 4"),
        ("tiling.overlap_px=-1", "tiling.overlap_px (--overlap) cannot be negative, got -1"),
        ("store.region_out_px=32", "store.region_out_px must be at least 64, got 32"),
        ("store.chunk_out_px=8", "store.chunk_out_px must be at least 16, got 8"),
        ("run.runner=dask", "run.runner must be one of ray, local, got 'dask'"),
        ("run.actors=-1", "run.actors (--actors) must be 0 (automatic) or more, got -1"),
        ("run.gpus_per_actor=-1", "run.gpus_per_actor (--gpus-per-actor) cannot be negative"),
        ("run.region_retries=-1", "run.region_retries must be >= 0, got -1"),
        ("run.in_flight_per_actor=0", "run.in_flight_per_actor must be >= 1, got 0"),
        ("run.active_jobs=0", "run.active_jobs must be >= 1, got 0"),
        ("run.term_grace_s=-1", "run.term_grace_s must be >= 0, got -1.0"),
        ("output.tile_px=24", "output.tile_px must be a positive multiple of 16, got 24"),
        ("output.tile_px=0", "output.tile_px must be a positive multiple of 16, got 0"),
        ("video.options=crf", "video.options expects key=value pairs, got 'crf'"),
        ("video.crf=64", "video.crf (--crf) must be between 0 and 63, got 64"),
        ("video.segment_frames=0", "video.segment_frames must be >= 1, got 0"),
        ("video.max_region_out_px=32", "video.max_region_out_px must be >= 64, got 32"),
        ("video.frames=abc", "video.frames (--frames) expects A:B (frame indices), got 'abc'"),
    ],
)
def test_each_rule_names_its_key(item, message):
    with pytest.raises(UserError) as err:
        load_config(set_items=[item])
    assert message in str(err.value)


def test_frames_and_times_exclude_each_other():
    with pytest.raises(UserError, match=r"give either video.frames \(--frames\) or video.start_s"):
        load_config(overrides={"video.frames": "1:5", "video.start_s": 0.5})


def test_a_yaml_value_is_checked_like_a_flag(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("tiling:\n  overlap_px: -3\n")
    with pytest.raises(UserError, match=r"tiling\.overlap_px \(--overlap\) cannot be negative"):
        load_config(preset)


def test_model_defaults_fill_the_tiling():
    cfg = resolve_model_defaults(load_config(), MODELS["bicubic"])
    assert (cfg.tiling.tile_px, cfg.tiling.overlap_px) == (512, 16)
    cfg = resolve_model_defaults(load_config(set_items=["tiling.tile_px=96"]), MODELS["bicubic"])
    assert (cfg.tiling.tile_px, cfg.tiling.overlap_px) == (96, 16)


@pytest.mark.parametrize(
    "items, spec_changes, message",
    [
        (
            ["model.scale=2"],
            {"scales": (4,)},
            "model.scale (--scale) must be one of 4 for model 'bicubic', got 2",
        ),
        (
            ["tiling.tile_px=100"],
            {"size_multiple": 64},
            "tiling.tile_px (--tile) must be a multiple of 64 for model 'bicubic', got 100",
        ),
        (
            ["tiling.tile_px=64", "tiling.overlap_px=64"],
            {},
            "tiling.overlap_px (--overlap) must be smaller than --tile 64 (tiling.tile_px)",
        ),
        (
            ["tiling.overlap_px=2"],
            {},
            "tiling.overlap_px (--overlap) must be at least 6 px for model 'bicubic', to blend "
            "tiles without seams; overlap 2 is too small",
        ),
    ],
)
def test_model_limits_name_the_key(items, spec_changes, message):
    spec = replace(MODELS["bicubic"], **spec_changes)
    with pytest.raises(UserError) as err:
        resolve_model_defaults(load_config(set_items=items), spec)
    assert message in str(err.value)


def test_validate_alone_takes_a_config_and_optionally_a_model():
    validate(JobConfig())
    validate(resolve_model_defaults(JobConfig(), MODELS["s3diff"]), MODELS["s3diff"])


def test_parsers():
    assert parse_frames("3:9") == (3, 9)
    assert parse_frames(":9") == (None, 9)
    assert parse_frames("3:") == (3, None)
    assert parse_degradation("0.3,0.5") == (0.3, 0.5)
