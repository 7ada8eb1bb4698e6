"""Job configuration: frozen dataclasses per concern, YAML presets, ``--set`` overrides.

The config is loaded and validated once, on the driver, before any work starts; every
later stage takes these objects (never an argparse namespace). ``None`` in a tiling
field means "the model's preferred default", resolved by :func:`resolve_model_defaults`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError

WINDOWS = ("gaussian", "cosine")
RUNNERS = ("ray", "local")
COLOR_FIXES = ("wavelet", "adain", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def parse_degradation(text: str) -> tuple[float, float]:
    """'0.3,0.5' -> (0.3, 0.5): S3Diff's two degradation scores, each in [0, 1]."""
    try:
        a, b = (float(v) for v in str(text).split(","))
    except ValueError:
        raise UserError(
            f"--degradation expects two numbers in [0,1] like 0.3,0.5, got {text!r}"
        ) from None
    if not (0.0 <= a <= 1.0 and 0.0 <= b <= 1.0):
        raise UserError(f"--degradation scores must lie in [0,1], got {text!r}")
    return a, b


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
    degradation_window: int = 0  # video: average the scores over +-N frames


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


@dataclass(frozen=True)
class VideoConfig:
    codec: str = "libx264"  # libx264 | libx265 | libsvtav1 | prores_ks | ffv1 | ...
    crf: int | None = 18
    preset: str | None = "medium"
    pix_fmt: str | None = None  # None: follow the source (10-bit stays 10-bit)
    options: str | None = None  # extra encoder options "key=value,key=value"
    drop_unsupported: bool = False  # leave out streams the output container cannot hold
    frames: str | None = None  # "A:B" frame indices to process
    start_s: float | None = None
    end_s: float | None = None
    segment_frames: int = 48  # decode segments: keyframe-aligned, at least this long
    max_region_out_px: int = 4096  # a frame whose output is larger is cut into regions
    # Free each frame's input and output from the store once encoded: bounds disk use
    # to the frames in flight, at the price of redoing those frames if the job resumes.
    drop_encoded: bool = False

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


def _section_types() -> dict[str, type]:
    return {f.name: f.default_factory().__class__ for f in fields(JobConfig)}  # type: ignore[misc]


def _coerce(section: str, key: str, value: Any, current: Any, annotation: str) -> Any:
    where = f"{section}.{key}"
    if value is None:
        if "None" in annotation:
            return None
        raise UserError(f"config {where} cannot be empty")
    if "bool" in annotation:
        if isinstance(value, bool):
            return value
        raise UserError(f"config {where} must be true or false, got {value!r}")
    if annotation.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config {where} must be an integer, got {value!r}")
        return value
    if annotation.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config {where} must be a number, got {value!r}")
        return float(value)
    if isinstance(value, (dict, list)):
        raise UserError(f"config {where} must be a single value, got {value!r}")
    return str(value)


def _apply(cfg: JobConfig, section: str, key: str, value: Any) -> JobConfig:
    sections = _section_types()
    if section not in sections:
        raise UserError(
            f"unknown config section {section!r}; known sections: {', '.join(sections)}"
        )
    sub = getattr(cfg, section)
    known = {f.name: f for f in fields(sub)}
    if key not in known:
        raise UserError(
            f"unknown config key {section}.{key}; known keys in {section}: {', '.join(known)}"
        )
    annotation = str(known[key].type)
    new_value = _coerce(section, key, value, getattr(sub, key), annotation)
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
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        cfg = _apply(cfg, section, key, value)
    validate(cfg)
    return cfg


def validate(cfg: JobConfig) -> None:
    """Checks that need no model or input; model-specific checks live in resolve_model_defaults."""
    m, t, s, r, o = cfg.model, cfg.tiling, cfg.store, cfg.run, cfg.output
    if m.scale < 1 or m.scale > 16:
        raise UserError(f"model.scale must be between 1 and 16, got {m.scale}")
    if m.color_fix not in COLOR_FIXES:
        raise UserError(
            f"model.color_fix must be one of {', '.join(COLOR_FIXES)}, got {m.color_fix!r}"
        )
    if m.precision not in PRECISIONS:
        raise UserError(
            f"model.precision must be one of {', '.join(PRECISIONS)}, got {m.precision!r}"
        )
    if m.degradation is not None:
        parse_degradation(m.degradation)
    if m.degradation_window < 0:
        raise UserError(f"model.degradation_window must be >= 0, got {m.degradation_window}")
    if m.batch_size < 1:
        raise UserError(f"model.batch_size must be at least 1, got {m.batch_size}")
    if t.window not in WINDOWS:
        raise UserError(f"tiling.window must be one of {', '.join(WINDOWS)}, got {t.window!r}")
    if t.tile_px is not None and t.tile_px < 8:
        raise UserError(f"--tile must be at least 8 input pixels, got {t.tile_px}")
    if t.overlap_px is not None and t.overlap_px < 0:
        raise UserError(f"--overlap cannot be negative, got {t.overlap_px}")
    if s.region_out_px < 64 or s.region_out_px < m.scale:
        raise UserError(f"store.region_out_px must be at least 64, got {s.region_out_px}")
    if s.chunk_out_px < 16:
        raise UserError(f"store.chunk_out_px must be at least 16, got {s.chunk_out_px}")
    if r.runner not in RUNNERS:
        raise UserError(f"run.runner must be one of {', '.join(RUNNERS)}, got {r.runner!r}")
    if r.actors < 0:
        raise UserError(f"--actors must be 0 (automatic) or more, got {r.actors}")
    if r.gpus_per_actor < 0:
        raise UserError(f"--gpus-per-actor cannot be negative, got {r.gpus_per_actor}")
    if r.region_retries < 0 or r.in_flight_per_actor < 1:
        raise UserError("run.region_retries must be >= 0 and run.in_flight_per_actor >= 1")
    if r.active_jobs < 1 or r.term_grace_s < 0:
        raise UserError("run.active_jobs must be >= 1 and run.term_grace_s >= 0")
    v = cfg.video
    v.options_dict()
    if v.crf is not None and not 0 <= v.crf <= 63:
        raise UserError(f"--crf must be between 0 and 63, got {v.crf}")
    if v.segment_frames < 1 or v.max_region_out_px < 64:
        raise UserError("video.segment_frames must be >= 1 and video.max_region_out_px >= 64")
    if v.frames is not None and (v.start_s is not None or v.end_s is not None):
        raise UserError("give either --frames or --start/--end, not both")
    if o.tile_px % 16 or o.tile_px < 16:
        raise UserError(f"output.tile_px must be a multiple of 16, got {o.tile_px}")


def resolve_model_defaults(
    cfg: JobConfig,
    default_tile_px: int,
    default_overlap_px: int,
    size_multiple: int,
    min_overlap_px: int,
) -> JobConfig:
    """Fill tile/overlap from the model's preferences and check them against its needs."""
    tile = cfg.tiling.tile_px if cfg.tiling.tile_px is not None else default_tile_px
    overlap = cfg.tiling.overlap_px if cfg.tiling.overlap_px is not None else default_overlap_px
    name = cfg.model.name
    if tile % size_multiple:
        raise UserError(
            f"--tile {tile} is not a multiple of {size_multiple}, which model {name!r} needs"
        )
    if overlap >= tile:
        raise UserError(f"--overlap {overlap} must be smaller than --tile {tile}")
    if overlap < min_overlap_px:
        raise UserError(
            f"--overlap {overlap} is too small for model {name!r}: tiles need at least "
            f"{min_overlap_px} px of overlap to blend without seams"
        )
    return replace(cfg, tiling=replace(cfg.tiling, tile_px=tile, overlap_px=overlap))
