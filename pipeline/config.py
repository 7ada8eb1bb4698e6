"""Job configuration: frozen dataclasses per concern, YAML presets, ``--set`` overrides.

The config is loaded and validated once, on the driver, before any work starts; every
later stage takes these objects (never an argparse namespace). Values are coerced to
the dataclass field types, and :func:`validate` holds every check of config values, its
messages naming the key and, where there is one, the flag (:data:`FLAGS`). ``None`` in
a tiling field means "the model's preferred default", filled in (and checked against
the model's limits) by :func:`resolve_model_defaults` once the model is known.
``configs/default.yaml`` writes the defaults out; tests/test_config.py keeps it so.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError
from pipeline.models import MODELS, ModelSpec

# The codecs ``store.codec`` names, for the frames of the job store's ``input`` and
# ``output`` arrays (pipeline.store.jobstore.scratch_codecs). Each frame is written once and read
# once, and a video's scratch is bounded by its decode window, so speed decides more
# than size: bench/store_codecs.py measures them.
SCRATCH_CODECS = ("zstd-0", "zstd-1", "blosc-lz4", "blosc-zstd-1", "none")

WINDOWS = ("gaussian", "cosine")
RUNNERS = ("ray", "local")
COLOR_FIXES = ("wavelet", "adain", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PALETTES = ("expand", "refuse")
DEINTERLACE_MODES = ("auto", "off", "frame", "field")  # pipeline/video/deinterlace.py


# The config keys that have a dedicated flag (cli.py builds its overrides from this);
# messages name the flag next to the key.
FLAGS = {
    "model.name": "--model",
    "model.scale": "--scale",
    "model.batch_size": "--batch-size",
    "model.weights": "--weights",
    "tiling.tile_px": "--tile",
    "tiling.overlap_px": "--overlap",
    "run.actors": "--actors",
    "run.gpus_per_actor": "--gpus-per-actor",
    "run.address": "--address",
    "store.work_dir": "--work-dir",
    "store.keep": "--keep-store",
    "video.codec": "--codec",
    "video.crf": "--crf",
    "video.preset": "--preset",
    "video.pix_fmt": "--pix-fmt",
    "video.frames": "--frames",
    "video.start_s": "--start",
    "video.end_s": "--end",
    "video.fps": "--fps",
    "video.start_number": "--start-number",
    "video.drop_unsupported": "--drop-unsupported",
}


DEGRADATION_MODES = ("auto", "frame", "window", "shot", "fixed")


def degradation_mode(model: ModelConfig, is_video: bool) -> str:
    """The mode ``auto`` stands for, or the one asked for."""
    mode = model.degradation_mode
    if mode != "auto":
        return mode
    if model.degradation is not None:
        return "fixed"
    if model.degradation_window > 0:
        return "window"
    return "shot" if is_video else "frame"


def parse_degradation(text: str) -> tuple[float, float]:
    """'0.3,0.5' -> (0.3, 0.5): S3Diff's two degradation scores, each in [0, 1]."""
    try:
        a, b = (float(v) for v in str(text).split(","))
    except ValueError:
        raise UserError(
            f"model.degradation expects two numbers in [0,1] like 0.3,0.5, got {text!r}"
        ) from None
    if not (0.0 <= a <= 1.0 and 0.0 <= b <= 1.0):
        raise UserError(f"model.degradation scores must lie in [0,1], got {text!r}")
    return a, b


def parse_value_range(text: str) -> tuple[float, float]:
    """'-100,3000' -> (-100.0, 3000.0): the sample values shown as black and white."""
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise UserError(
            f"model.value_range expects MIN,MAX (two numbers, MIN < MAX) like -100,3000, "
            f"got {text!r}"
        ) from None
    if not lo < hi:
        raise UserError(f"model.value_range needs MIN < MAX, got {text!r}")
    return lo, hi


def parse_frames(text: str) -> tuple[int | None, int | None]:
    """'10:20' -> (10, 20), ':20' -> (None, 20): source frame indices [A, B); None: open."""
    try:
        a_text, b_text = text.split(":")
        return (int(a_text) if a_text else None, int(b_text) if b_text else None)
    except ValueError:
        raise UserError(
            f"{_named('video.frames')} expects A:B (frame indices), got {text!r}"
        ) from None


@dataclass(frozen=True)
class ModelConfig:
    name: str = "bicubic"
    scale: int = 4
    batch_size: int = 4
    weights: str | None = None  # S3Diff weights directory (see workers/s3diff/locations.py)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # S3Diff only; ignored by models that do not use them.
    color_fix: str = "wavelet"  # wavelet | adain | none
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    fold_lora: bool = True  # fold the modulated LoRA into the base weights per conditioning
    compile: bool = False  # torch.compile the UNet/VAE (GPU)
    degradation: str | None = None  # fixed scores "B,N" in [0,1] instead of estimating them
    # Where a frame's scores come from: frame (its own), window (the mean over +-
    # degradation_window frames), shot (the mean over its shot: cuts found on the LR
    # frames, pipeline/pure/shots.py), fixed (model.degradation). auto: fixed when
    # model.degradation is given, window when degradation_window > 0, else shot.
    degradation_mode: str = "auto"
    degradation_window: int = 0  # video: average the scores over +-N frames (window mode)
    shot_threshold: float = 0.3  # shot mode: how different two frames are at a cut (0..1)
    # "MIN,MAX": the sample values the model sees as 0 and 1 (needed by models other
    # than bicubic for signed/float inputs); outputs are clipped to it. None: the
    # type's range (unsigned, signed), or the values as they are (float).
    value_range: str | None = None


@dataclass(frozen=True)
class TilingConfig:
    tile_px: int | None = None
    overlap_px: int | None = None
    window: str = "gaussian"


@dataclass(frozen=True)
class StoreConfig:
    work_dir: str | None = None
    # Targets: a region is region_out_px // scale input pixels; its output shard is
    # that times the scale, cut into chunks of about chunk_out_px (tiling.shard_geometry).
    region_out_px: int = 2048
    chunk_out_px: int = 512
    keep: bool = False
    # The input and output frames' codec: auto (video: none, image: zstd-0) or one of
    # pipeline.store.jobstore.SCRATCH_CODECS (bench/store_codecs.py measures them).
    codec: str = "auto"


@dataclass(frozen=True)
class RunConfig:
    runner: str = "ray"  # ray | local (in-process, sequential: tests and debugging)
    address: str | None = None
    actors: int = 0
    gpus_per_actor: float = 1.0
    region_retries: int = 2
    in_flight_per_actor: int = 2
    active_jobs: int = 2  # batch items in progress at once (their regions interleave)
    term_grace_s: float = 20.0  # on SIGTERM, how long regions in flight may finish


@dataclass(frozen=True)
class OutputConfig:
    max_in_memory_mb: int = 2048
    max_input_decode_mb: int = 2048
    pyramid_min_px: int = 256
    tile_px: int = 512
    jpeg_quality: int = 95
    # Palette (colour-table) inputs: "expand" to RGB(A) colours; "refuse" them (their
    # values are class codes, and every model interpolates, inventing codes).
    palette: str = "expand"


@dataclass(frozen=True)
class VideoConfig:
    codec: str = "libx264"  # libx264 | libx265 | libsvtav1 | prores_ks | ffv1 | ...
    crf: int | None = 18
    preset: str | None = "medium"
    pix_fmt: str | None = None  # None: follow the source (10-bit stays 10-bit)
    options: str | None = None  # extra encoder options "key=value,key=value"
    drop_unsupported: bool = False  # leave out what the output container cannot hold
    frames: str | None = None  # "A:B" frame indices to process
    start_s: float | None = None
    end_s: float | None = None
    fps: str = "24"  # a frame sequence input's rate: 24, 25, 24000/1001, ...
    start_number: int | None = None  # a sequence output's first number (None: the source's)
    # Segments are the unit of decode, encode and resume: keyframe-aligned ranges of
    # about segment_s seconds (or at least segment_frames frames), cut mid-GOP only past
    # segment_max_frames (default 4x the target). Each is encoded on its own (closed
    # GOP) and the segments are joined without re-encoding.
    segment_s: float = 4.0
    segment_frames: int | None = None
    segment_max_frames: int | None = None
    encoders: int = 0  # segments encoded at once (0: from the cluster's CPUs)
    encoder_threads: int = 0  # threads per encoder (0: the codec's own choice)
    # Decode runs at most this many frames ahead of the oldest frame not yet encoded
    # (0: enough for every encoder plus two segments upscaling and decoding).
    max_frames_in_store: int = 0
    keep_frames: bool = False  # keep frames in the store after their segment is encoded
    max_region_out_px: int = 4096  # a frame whose output is larger is cut into regions
    # Interlaced sources (pipeline/video/deinterlace.py): auto (bwdif on interlaced sources, one
    # frame per frame) | off (frames as they are) | frame (bwdif on every source) | field
    # (bwdif, one frame per field: 25i -> 50p).
    deinterlace: str = "auto"

    def __post_init__(self) -> None:
        # YAML reads a bare ``off`` (``--set video.deinterlace=off``) as false.
        if self.deinterlace in (False, "False", "false"):
            object.__setattr__(self, "deinterlace", "off")

    def options_dict(self) -> dict[str, str]:
        if not self.options:
            return {}
        out = {}
        for item in self.options.split(","):
            if "=" not in item:
                raise UserError(f"video.options expects key=value pairs, got {item!r}")
            k, v = item.split("=", 1)
            out[k.strip()] = v.strip()
        return out


@dataclass(frozen=True)
class JobConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    run: RunConfig = field(default_factory=RunConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    video: VideoConfig = field(default_factory=VideoConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _sections() -> dict[str, type]:
    """Section name -> its dataclass, e.g. "tiling" -> TilingConfig."""
    return {f.name: f.default_factory for f in fields(JobConfig)}  # type: ignore[misc]


def coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` (from YAML, a flag or ``--set``) as a value of the field type ``tp``.

    ``tp`` is a resolved type (``typing.get_type_hints``): bool, int, float, str,
    ``X | None`` or a tuple of those. YAML already gives numbers and booleans, so no
    text is parsed here, except that a tuple also accepts "a,b" (what ``--set`` gives).
    """
    where = _named(key)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"config {where}: unsupported field type {tp!r}")
        tp = inner[0]
    if value is None:
        raise UserError(f"config {where} cannot be empty")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config {where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config {where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config {where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"config {where} must be a single value, got {value!r}")
        return str(value)
    if typing.get_origin(tp) is tuple:
        return _coerce_tuple(key, value, typing.get_args(tp))
    raise TypeError(f"config {where}: unsupported field type {tp!r}")


def _coerce_tuple(key: str, value: Any, item_types: tuple[Any, ...]) -> tuple[Any, ...]:
    if isinstance(value, str):
        items: list[Any] = [_scalar(v) for v in value.split(",")] if value else []
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise UserError(f"config {_named(key)} must be a list, got {value!r}")
    if len(item_types) == 2 and item_types[1] is Ellipsis:
        item_types = (item_types[0],) * len(items)
    elif len(items) != len(item_types):
        raise UserError(f"config {_named(key)} must hold {len(item_types)} values, got {value!r}")
    pairs = enumerate(zip(items, item_types, strict=True))
    return tuple(coerce(f"{key}[{i}]", v, t) for i, (v, t) in pairs)


def _scalar(text: str) -> Any:
    """A ``--set`` value as YAML reads it ("4" -> 4, "true" -> True, "" -> None)."""
    if not text.strip():
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _apply(cfg: JobConfig, section: str, key: str, value: Any) -> JobConfig:
    sections = _sections()
    if section not in sections:
        raise UserError(
            f"unknown config section {section!r}; known sections: {', '.join(sections)}"
        )
    types_ = typing.get_type_hints(sections[section])
    if key not in types_:
        raise UserError(
            f"unknown config key {section}.{key}; known keys in {section}: {', '.join(types_)}"
        )
    sub = getattr(cfg, section)
    new_value = coerce(f"{section}.{key}", value, types_[key])
    return replace(cfg, **{section: replace(sub, **{key: new_value})})


def load_config(
    preset: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    set_items: list[str] | tuple[str, ...] = (),
) -> JobConfig:
    """Build and validate a config: defaults <- YAML preset <- CLI flags <- ``--set`` items.

    ``overrides`` maps "section.key" to values from dedicated CLI flags; ``set_items``
    are "section.key=value" strings whose values are parsed as YAML scalars.
    """
    cfg = JobConfig()
    if preset is not None:
        path = Path(preset)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist; see configs/ for presets")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise UserError(f"config file {path} is not valid YAML: {first}") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {path} must be a mapping of sections")
        for section, values in data.items():
            if not isinstance(values, dict):
                raise UserError(f"config file {path}: section {section!r} must be a mapping")
            for key, value in values.items():
                cfg = _apply(cfg, str(section), str(key), value)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        cfg = _apply(cfg, section, key, value)
    for item in set_items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UserError(f"--set expects section.key=value, got {item!r}")
        dotted, raw = item.split("=", 1)
        section, key = dotted.strip().split(".", 1)
        cfg = _apply(cfg, section, key, _scalar(raw))
    validate(cfg)
    return cfg


def chooses_model(
    preset: str | Path | None,
    overrides: dict[str, Any] | None = None,
    set_items: list[str] | tuple[str, ...] = (),
) -> bool:
    """Whether the preset, a flag or a ``--set`` item names the model (call it after
    :func:`load_config` accepted the same arguments)."""
    if "model.name" in (overrides or {}):
        return True
    if any(item.split("=", 1)[0].strip() == "model.name" for item in set_items):
        return True
    if preset is None:
        return False
    data = yaml.safe_load(Path(preset).read_text()) or {}
    return "name" in (data.get("model") or {})


def _named(key: str) -> str:
    """ "tiling.overlap_px" -> "tiling.overlap_px (--overlap)": the key, and its flag if any."""
    return f"{key} ({FLAGS[key]})" if key in FLAGS else key


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise UserError(f"{_named(key)} {problem}")


def validate(cfg: JobConfig, model: ModelSpec | None = None) -> None:
    """Every check of config values, each message naming the key (and its flag).

    :func:`load_config` calls it without ``model``; :func:`resolve_model_defaults` again
    with the model's spec, adding its limits. Checks that need the input stay in plan.
    """
    m, t, s, r, o, v = cfg.model, cfg.tiling, cfg.store, cfg.run, cfg.output, cfg.video
    if m.name not in MODELS:
        available = ", ".join(sorted(MODELS))
        raise UserError(
            f"{_named('model.name')} names an unknown model {m.name!r}; available: {available}"
        )
    _require(1 <= m.scale <= 16, "model.scale", f"must be between 1 and 16, got {m.scale}")
    _require(m.batch_size >= 1, "model.batch_size", f"must be at least 1, got {m.batch_size}")
    _require(
        m.color_fix in COLOR_FIXES,
        "model.color_fix",
        f"must be one of {', '.join(COLOR_FIXES)}, got {m.color_fix!r}",
    )
    _require(
        m.precision in PRECISIONS,
        "model.precision",
        f"must be one of {', '.join(PRECISIONS)}, got {m.precision!r}",
    )
    if m.degradation is not None:
        parse_degradation(m.degradation)
    _require(
        m.degradation_mode in DEGRADATION_MODES,
        "model.degradation_mode",
        f"must be one of {', '.join(DEGRADATION_MODES)}, got {m.degradation_mode!r}",
    )
    _require(
        m.degradation_mode != "fixed" or m.degradation is not None,
        "model.degradation_mode",
        "is fixed but model.degradation gives no scores; set it to B,N",
    )
    _require(
        m.degradation is None or m.degradation_mode in ("auto", "fixed"),
        "model.degradation",
        f"gives fixed scores, which model.degradation_mode={m.degradation_mode} would not "
        "use; drop one of them",
    )
    _require(
        0 < m.shot_threshold <= 1,
        "model.shot_threshold",
        f"must be in (0, 1], got {m.shot_threshold}",
    )
    if m.value_range is not None:
        parse_value_range(m.value_range)
    _require(
        m.degradation_window >= 0,
        "model.degradation_window",
        f"must be >= 0, got {m.degradation_window}",
    )
    _require(
        t.window in WINDOWS,
        "tiling.window",
        f"must be one of {', '.join(WINDOWS)}, got {t.window!r}",
    )
    _require(
        t.tile_px is None or t.tile_px >= 8,
        "tiling.tile_px",
        f"must be at least 8 input pixels, got {t.tile_px}",
    )
    _require(
        t.overlap_px is None or t.overlap_px >= 0,
        "tiling.overlap_px",
        f"cannot be negative, got {t.overlap_px}",
    )
    _require(
        s.region_out_px >= 64, "store.region_out_px", f"must be at least 64, got {s.region_out_px}"
    )
    _require(
        s.chunk_out_px >= 16, "store.chunk_out_px", f"must be at least 16, got {s.chunk_out_px}"
    )
    _require(
        s.codec in ("auto", *SCRATCH_CODECS),
        "store.codec",
        f"must be auto or one of {', '.join(SCRATCH_CODECS)}, got {s.codec!r}",
    )
    _require(
        r.runner in RUNNERS, "run.runner", f"must be one of {', '.join(RUNNERS)}, got {r.runner!r}"
    )
    _require(r.actors >= 0, "run.actors", f"must be 0 (automatic) or more, got {r.actors}")
    _require(
        r.gpus_per_actor >= 0, "run.gpus_per_actor", f"cannot be negative, got {r.gpus_per_actor}"
    )
    _require(r.region_retries >= 0, "run.region_retries", f"must be >= 0, got {r.region_retries}")
    _require(
        r.in_flight_per_actor >= 1,
        "run.in_flight_per_actor",
        f"must be >= 1, got {r.in_flight_per_actor}",
    )
    _require(r.active_jobs >= 1, "run.active_jobs", f"must be >= 1, got {r.active_jobs}")
    _require(r.term_grace_s >= 0, "run.term_grace_s", f"must be >= 0, got {r.term_grace_s}")
    _require(
        o.tile_px >= 16 and o.tile_px % 16 == 0,
        "output.tile_px",
        f"must be a positive multiple of 16, got {o.tile_px}",
    )
    _require(
        o.palette in PALETTES,
        "output.palette",
        f"must be one of {', '.join(PALETTES)}, got {o.palette!r}",
    )
    v.options_dict()
    _require(
        v.deinterlace in DEINTERLACE_MODES,
        "video.deinterlace",
        f"must be one of {', '.join(DEINTERLACE_MODES)}, got {v.deinterlace!r}",
    )
    _require(
        v.crf is None or 0 <= v.crf <= 63, "video.crf", f"must be between 0 and 63, got {v.crf}"
    )
    _require(
        v.segment_frames is None or v.segment_frames >= 1,
        "video.segment_frames",
        f"must be >= 1, got {v.segment_frames}",
    )
    _require(v.segment_s > 0, "video.segment_s", f"must be > 0, got {v.segment_s}")
    _require(
        v.segment_max_frames is None or v.segment_max_frames >= 1,
        "video.segment_max_frames",
        f"must be >= 1, got {v.segment_max_frames}",
    )
    for key in ("encoders", "encoder_threads", "max_frames_in_store"):
        value = getattr(v, key)
        _require(value >= 0, f"video.{key}", f"must be >= 0 (0: automatic), got {value}")
    _require(
        v.max_region_out_px >= 64,
        "video.max_region_out_px",
        f"must be >= 64, got {v.max_region_out_px}",
    )
    _require(
        _is_rate(v.fps), "video.fps", f"must be a frame rate like 24 or 24000/1001, got {v.fps!r}"
    )
    _require(
        v.start_number is None or v.start_number >= 0,
        "video.start_number",
        f"must be >= 0, got {v.start_number}",
    )
    if v.frames is not None:
        parse_frames(v.frames)
        if v.start_s is not None or v.end_s is not None:
            raise UserError(
                f"give either {_named('video.frames')} or video.start_s/video.end_s "
                "(--start/--end), not both"
            )
    if model is not None:
        _validate_for_model(cfg, model)


def _is_rate(text: Any) -> bool:
    try:
        return Fraction(str(text).strip()) > 0
    except (ValueError, ZeroDivisionError):
        return False


def _validate_for_model(cfg: JobConfig, model: ModelSpec) -> None:
    scale, name = cfg.model.scale, model.name
    tile, overlap = _model_tiling(cfg, model)
    _require(
        model.scales is None or scale in model.scales,
        "model.scale",
        f"must be one of {', '.join(map(str, model.scales or ()))} for model {name!r}, got {scale}",
    )
    _require(
        tile % model.size_multiple == 0,
        "tiling.tile_px",
        f"must be a multiple of {model.size_multiple} for model {name!r}, got {tile}",
    )
    _require(
        overlap < tile,
        "tiling.overlap_px",
        f"must be smaller than --tile {tile} (tiling.tile_px), got {overlap}",
    )
    _require(
        overlap >= model.min_overlap_px,
        "tiling.overlap_px",
        f"must be at least {model.min_overlap_px} px for model {name!r}, to blend tiles "
        f"without seams; overlap {overlap} is too small",
    )


def _model_tiling(cfg: JobConfig, model: ModelSpec) -> tuple[int, int]:
    """(tile_px, overlap_px): the config's, or the model's preferred where it has None."""
    t = cfg.tiling
    tile = t.tile_px if t.tile_px is not None else model.default_tile_px
    overlap = t.overlap_px if t.overlap_px is not None else model.default_overlap_px
    return tile, overlap


def resolve_model_defaults(cfg: JobConfig, model: ModelSpec) -> JobConfig:
    """Fill tile/overlap from the model's preferences and check the config against its limits."""
    tile, overlap = _model_tiling(cfg, model)
    cfg = replace(cfg, tiling=replace(cfg.tiling, tile_px=tile, overlap_px=overlap))
    validate(cfg, model)
    return cfg


def frame_codec(codec: str, is_image: bool) -> str:
    """``store.codec`` resolved: auto is none for video frames (scratch, bounded, written
    and read once each) and zstd-0 for images (the output array is the whole upscaled
    image until it is published, so its size counts)."""
    if codec != "auto":
        return codec
    return "zstd-0" if is_image else "none"
