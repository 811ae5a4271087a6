"""Run configuration: frozen dataclasses per stage, read from YAML and overridden from the CLI.

``load_config(path, overrides)`` reads a YAML file (sections ``data``, ``augment``, ``model``,
``train``, ``scan``) and applies ``section.key=value`` overrides; every value is checked in
``__post_init__`` so a bad option fails before any work with a one-line ``InputError``.
The resolved config is written beside every run's outputs (``to_dict`` / ``dump_yaml``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wsi_saliency.errors import InputError

BACKBONES = ("resnet50", "densenet169", "mobilenetv2", "tiny")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise InputError(message)


@dataclass(frozen=True)
class DataConfig:
    """Where the patches come from: a PCam HDF5 folder, image folders or Kaggle's layout."""

    path: str = "sample_data/pcam"
    train_split: str = "train"
    valid_split: str = "valid"
    batch_size: int = 64
    shuffle_buffer_chunks: int = 8  # rows are shuffled within this many HDF5 chunks
    cache_dir: str | None = None  # where image folders are converted to HDF5 (default ~/.cache)

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, f"data.batch_size must be >= 1, got {self.batch_size}")
        _check(self.shuffle_buffer_chunks >= 1, "data.shuffle_buffer_chunks must be >= 1")


@dataclass(frozen=True)
class AugmentConfig:
    """On-the-fly augmentation of the original study (Keras preprocessing layers)."""

    rotation_deg: float = 90.0  # random rotation in [-rotation_deg, +rotation_deg]
    zoom: float = 0.2  # random zoom in [1 - zoom, 1 + zoom]
    translate: float = 0.1  # random shift up to this fraction of the patch side
    flip_horizontal: bool = True
    flip_vertical: bool = True
    fill_mode: str = "reflect"
    color_jitter: float = 0.0  # brightness/contrast/saturation/hue jitter strength; 0 = off

    def __post_init__(self) -> None:
        _check(0 <= self.rotation_deg <= 180, "augment.rotation_deg must be in [0, 180]")
        _check(0 <= self.zoom < 1, "augment.zoom must be in [0, 1)")
        _check(0 <= self.translate < 1, "augment.translate must be in [0, 1)")
        _check(0 <= self.color_jitter <= 1, "augment.color_jitter must be in [0, 1]")
        _check(
            self.fill_mode in ("reflect", "wrap", "nearest", "constant"),
            f"augment.fill_mode must be reflect, wrap, nearest or constant, got {self.fill_mode!r}",
        )


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and binary head."""

    backbone: str = "resnet50"
    weights: str = "imagenet"  # imagenet | none | path to a Keras weights file for the backbone
    dropout: float = 0.5
    hidden_units: int = 0  # 0 = GAP -> dropout -> Dense(1); > 0 adds a Dense(relu) layer
    gradcam_layer: str | None = None  # default: the backbone's last convolutional block
    alpha: float = 1.0  # width multiplier (mobilenetv2 only)
    patch_size: int = 96
    patch_mpp: float = 0.972  # microns per pixel of the training patches (PCam)

    def __post_init__(self) -> None:
        _check(
            self.backbone in BACKBONES,
            f"model.backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}",
        )
        _check(0 <= self.dropout < 1, "model.dropout must be in [0, 1)")
        _check(self.hidden_units >= 0, "model.hidden_units must be >= 0")
        _check(self.patch_size >= 32, "model.patch_size must be >= 32")
        _check(self.patch_mpp > 0, "model.patch_mpp must be > 0 (microns per pixel)")


@dataclass(frozen=True)
class TrainConfig:
    """Two phases: the head on a frozen backbone, then fine-tuning at a lower learning rate."""

    seed: int = 0
    head_epochs: int = 2
    finetune_epochs: int = 10
    head_lr: float = 1e-3
    finetune_lr: float = 1e-4
    # Fine-tune from the first layer whose name starts with this prefix to the end
    # ("all" = whole backbone; null = the backbone's default, e.g. conv4 for ResNet50).
    finetune_from: str | None = None
    freeze_batchnorm: bool = True  # keep BatchNorm in inference mode while fine-tuning
    lr_schedule: str = "plateau"  # plateau | cosine | constant
    early_stopping_patience: int = 4  # epochs without valid AUC gain (0 = off)
    steps_per_epoch: int | None = None  # null = one pass over the train split
    validation_steps: int | None = None  # null = the whole valid split
    mixed_precision: str = "auto"  # auto (on with a GPU) | on | off
    jit_compile: str = "auto"  # auto | on | off
    verbose: int = 1  # Keras progress bar: 0 silent, 1 bar, 2 one line per epoch
    # Re-estimate the statistics of trainable BatchNorm layers on this many un-augmented train
    # batches before the kept model is saved (0 = off); see training.recalibrate_batchnorm.
    precise_bn_batches: int = 50
    # Data parallel over every local accelerator (auto; data.batch_size is the global batch)
    # or one device (off); see training.data_parallel.
    distribute: str = "off"

    def __post_init__(self) -> None:
        _check(self.head_epochs >= 0 and self.finetune_epochs >= 0, "epochs must be >= 0")
        _check(
            self.distribute in ("auto", "off"),
            f"train.distribute must be auto (every local GPU) or off, got {self.distribute!r}",
        )
        _check(self.head_epochs + self.finetune_epochs >= 1, "train for at least one epoch")
        _check(self.head_lr > 0 and self.finetune_lr > 0, "learning rates must be > 0")
        _check(
            self.lr_schedule in ("plateau", "cosine", "constant"),
            f"train.lr_schedule must be plateau, cosine or constant, got {self.lr_schedule!r}",
        )
        for name in ("mixed_precision", "jit_compile"):
            value = getattr(self, name)
            _check(value in ("auto", "on", "off"), f"train.{name} must be auto, on or off")
        _check(self.precise_bn_batches >= 0, "train.precise_bn_batches must be >= 0")
        for name in ("steps_per_epoch", "validation_steps"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"train.{name} must be >= 1 or null")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says it)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def default_workers() -> int:
    """Reading threads when ``scan.workers`` is null: one per usable core, at most 16."""
    return min(16, usable_cores())


@dataclass(frozen=True)
class ScanConfig:
    """How slides are scanned. Sizes are in pixels of the model's resolution (target plane)."""

    stride: int | None = None  # null = the patch size; 32 puts every prediction on PCam's centre
    batch_size: int = 64
    min_tissue_fraction: float = 0.25  # patches with less tissue are not scored
    thumb_mpp: float = 8.0  # resolution of the thumbnail the tissue mask is computed on
    slide_mpp: float | None = None  # level-0 microns per pixel when the slide does not say
    mpp_tolerance: float = 0.05  # a level within 5 % of the model's mpp is read as is
    gradcam: bool = True
    gradcam_layer: str | None = None  # null = the layer recorded in the model file
    gradcam_cells: int = 12  # Grad-CAM heatmap cells per patch side
    gradcam_centre_weighted: bool = False  # Gaussian weights when overlapping maps are averaged
    gradcam_map: str = "dense"  # slide map: dense (features over whole regions) | patches
    # dense map only around patches whose own map reaches this fraction of the slide's Grad-CAM
    # scale (99.5th percentile); the rest keep their per-patch maps, all but zero. 0 = everywhere
    gradcam_dense_min: float = 1 / 64
    tta: bool = False  # 8-fold dihedral test-time augmentation (8x the compute)
    workers: int | None = (
        None  # reading threads or processes (own slide handle each); null = one per core, <= 16
    )
    # read in threads or in processes (see slide/loader.py); auto = processes when the model
    # runs on a GPU (reading must keep up with it), threads on a CPU (the model is the limit)
    reader: str = "auto"
    region: int = 1024  # side of the regions read at once (target px)
    mixed_precision: str = "off"  # off | on (GPU: float16; CPU: bfloat16 if it has it) | auto
    jit_compile: str = "auto"  # XLA / jax.jit for the Grad-CAM pass: auto | on | off
    # fold each BatchNormalization into the convolution before it when the scan loads the
    # model (model/fold.py): same model, float32 rounding apart, fewer operations
    fold_batch_norm: bool = True
    threshold: float = 0.5  # probability above which area is counted as suspicious
    top_k: int = 10  # slide score: mean of the top-k patch probabilities (and the max)

    def __post_init__(self) -> None:
        _check(self.stride is None or self.stride >= 1, "scan.stride must be >= 1 or null")
        _check(self.batch_size >= 1, "scan.batch_size must be >= 1")
        _check(0 <= self.min_tissue_fraction <= 1, "scan.min_tissue_fraction must be in [0, 1]")
        _check(self.thumb_mpp > 0, "scan.thumb_mpp must be > 0")
        _check(
            self.slide_mpp is None or self.slide_mpp > 0,
            "scan.slide_mpp must be > 0 microns per pixel",
        )
        _check(0 <= self.mpp_tolerance < 0.5, "scan.mpp_tolerance must be in [0, 0.5)")
        _check(2 <= self.gradcam_cells <= 96, "scan.gradcam_cells must be in [2, 96]")
        _check(self.gradcam_map in ("dense", "patches"), "scan.gradcam_map: dense|patches")
        _check(0 <= self.gradcam_dense_min <= 1, "scan.gradcam_dense_min must be in [0, 1]")
        _check(self.workers is None or self.workers >= 0, "scan.workers must be >= 0 or null")
        _check(
            self.reader in ("auto", "threads", "processes"), "scan.reader: auto|threads|processes"
        )
        _check(self.region >= 96, "scan.region must be >= 96 pixels")
        _check(self.mixed_precision in ("auto", "on", "off"), "scan.mixed_precision: auto|on|off")
        _check(self.jit_compile in ("auto", "on", "off"), "scan.jit_compile: auto|on|off")
        _check(0 <= self.threshold <= 1, "scan.threshold must be in [0, 1]")
        _check(self.top_k >= 1, "scan.top_k must be >= 1")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "scan": ScanConfig,
}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "")):
            return None
        hint = args[0]
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
        raise InputError(f"{key} must be true or false, got {value!r}")
    if hint in (int, float):
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise InputError(f"{key} must be a number, got {value!r}") from None
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise InputError(f"{key} must be a whole number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, (dict, list)):
            raise InputError(f"{key} must be a single value, got {value!r}")
        if isinstance(value, bool):  # YAML 1.1 reads a bare on/off (yes/no) as a boolean
            return "on" if value else "off"
        return str(value)
    return value


def _build_section(name: str, values: dict[str, Any]) -> Any:
    cls = SECTIONS[name]
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown option {name}.{unknown[0]} (known: {', '.join(sorted(known))})")
    kwargs = {k: _coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"train.seed=3"`` -> ``("train", "seed", 3)`` (the value is parsed as YAML)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise InputError(f"override {text!r} must look like section.key=value, e.g. train.seed=3")
    key, raw = text.split("=", 1)
    section, name = key.strip().split(".", 1)
    if section not in SECTIONS:
        raise InputError(f"override {text!r}: unknown section {section!r} ({', '.join(SECTIONS)})")
    return section, name.strip(), yaml.safe_load(raw) if raw.strip() else None


def load_config(
    path: str | Path | None = None,
    overrides: typing.Iterable[str | tuple] = (),
    flags: typing.Mapping[str, str] | None = None,
) -> RunConfig:
    """Read ``path`` (YAML; optional) and apply ``section.key=value`` overrides, file then CLI.

    ``flags`` maps ``section.key`` to the command-line flag that sets it (``"scan.batch_size":
    "--batch-size"``): an error about that option then names the flag too.
    """
    raw: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file {path} does not exist: pass an existing YAML file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise InputError(f"config file {path} is not valid YAML ({first})") from None
        if not isinstance(loaded, dict):
            raise InputError(f"config file {path} must be a mapping of sections")
        for section, values in loaded.items():
            if section not in SECTIONS:
                raise InputError(
                    f"config file {path}: unknown section {section!r} "
                    f"(known: {', '.join(SECTIONS)})"
                )
            if values is None:
                continue
            if not isinstance(values, dict):
                raise InputError(f"config file {path}: section {section!r} must be a mapping")
            raw[section].update(values)
    for item in overrides:
        section, name, value = parse_override(item) if isinstance(item, str) else item
        raw[section][name] = value
    try:
        return RunConfig(**{name: _build_section(name, values) for name, values in raw.items()})
    except InputError as exc:
        message = str(exc)
        for key, flag in (flags or {}).items():
            if message.startswith(f"{key} "):
                raise InputError(f"{key} ({flag}){message[len(key) :]}") from None
        raise


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a ``RunConfig`` from ``to_dict`` output (e.g. from a model file or a run folder)."""
    return RunConfig(
        **{name: _build_section(name, dict(data.get(name) or {})) for name in SECTIONS}
    )


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
