"""Validated configurations, one per task, saved inside every model file.

A model file alone says how its network was built and trained: the configuration is stored
as JSON next to the weights, and a configuration is checked when it is built (bounds,
allowed values, no unknown keys), so a typo fails early with a message instead of deep
inside training.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InvalidInputError

#: Version of the model-file layout written by this release. Readers accept every version up
#: to this one; later releases translate older layouts in :func:`upgrade_config_dict`.
FORMAT_VERSION = 1

AXES_LETTERS = "STCZYX"

DenoiserMode = Literal["n2v2", "n2v", "dae"]
NoiseKind = Literal["gaussian", "poisson", "salt_pepper"]
OptimizerName = Literal["adam", "adamw", "sgd", "rmsprop"]
LossName = Literal["mse", "l1"]
SchedulerName = Literal["cosine", "plateau", "constant"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NoiseSpec(_Strict):
    """One synthetic noise component for ``dae`` training.

    ``gaussian``: standard deviation as a fraction of the normalised intensity range.
    ``poisson``: photons at the top of the normalised range (lower is noisier).
    ``salt_pepper``: fraction of pixels set to the minimum or maximum.
    """

    kind: NoiseKind
    level: float = Field(gt=0)

    @model_validator(mode="after")
    def _check_level(self) -> NoiseSpec:
        if self.kind in ("gaussian", "salt_pepper") and self.level > 1:
            raise ValueError(f"{self.kind} level must be in (0, 1], got {self.level}")
        return self

    @classmethod
    def parse(cls, text: str) -> NoiseSpec:
        """Read ``kind:level`` (``gaussian:0.1``, ``poisson:30``, ``salt_pepper:0.01``)."""
        kind, sep, level = text.partition(":")
        defaults = {"gaussian": 0.1, "poisson": 30.0, "salt_pepper": 0.01}
        kind = kind.strip().lower().replace("-", "_")
        if kind not in defaults:
            raise InvalidInputError(
                f"unknown noise '{text}'; use gaussian:SIGMA, poisson:PHOTONS or salt_pepper:FRACTION"
            )
        try:
            value = float(level) if sep else defaults[kind]
        except ValueError:
            raise InvalidInputError(f"noise level in '{text}' is not a number") from None
        return build(cls, kind=kind, level=value)

    def __str__(self) -> str:
        return f"{self.kind}:{self.level:g}"


class ArchitectureConfig(_Strict):
    """A U-Net shaped convolutional autoencoder: encoder, decoder and a 1x1 head."""

    spatial_dims: Literal[2, 3] = 2
    in_channels: int = Field(1, ge=1, le=64)
    out_channels: int = Field(1, ge=1, le=64)
    depth: int = Field(2, ge=1, le=5)
    base_channels: int = Field(32, ge=4, le=256)
    #: N2V2: max-blur-pool downsampling instead of max pooling (against checkerboard artefacts)
    blur_pool: bool = False
    #: N2V2 drops the skip connection at full resolution so the blind spot cannot leak
    top_skip: bool = True
    #: off by default: with the small batches of patch training its statistics are unreliable
    batch_norm: bool = False

    @property
    def divisor(self) -> int:
        """Every spatial size the network sees must be a multiple of this."""
        return 2**self.depth


class TrainingConfig(_Strict):
    steps: int = Field(2000, ge=1, le=10_000_000)
    batch_size: int = Field(16, ge=1, le=4096)
    patch_size: int = Field(64, ge=8, le=4096)
    #: patch depth along Z for 3D data
    patch_size_z: int = Field(16, ge=4, le=1024)
    learning_rate: float = Field(1e-3, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0, le=1)
    optimizer: OptimizerName = "adam"
    loss: LossName = "mse"
    scheduler: SchedulerName = "cosine"
    val_fraction: float = Field(0.1, ge=0.0, le=0.5)
    #: evaluate on the validation patches every this many steps (0: ten times per run)
    val_interval: int = Field(0, ge=0)
    val_patches: int = Field(32, ge=1, le=4096)
    #: fraction of pixels hidden by the blind spot in each patch (N2V used 0.2% with large
    #: batches and long runs; 5% learns faster in the minutes a CPU user trains for)
    masked_fraction: float = Field(0.05, gt=0, le=0.5)
    #: neighbourhood radius from which blind-spot replacements are drawn
    blind_spot_radius: int = Field(2, ge=1, le=8)
    augment: bool = True
    amp: bool = True
    seed: int = 0


class Normalization(_Strict):
    """Per-channel percentile normalisation: ``(x - low) / (high - low)``."""

    low: list[float]
    high: list[float]
    percentiles: tuple[float, float] = (0.5, 99.5)

    @model_validator(mode="after")
    def _check(self) -> Normalization:
        if len(self.low) != len(self.high):
            raise ValueError("normalisation low and high need one value per channel")
        return self


class DenoiserConfig(_Strict):
    """Everything that defines a denoiser: data layout, network, training and normalisation."""

    kind: Literal["denoiser"] = "denoiser"
    format_version: int = FORMAT_VERSION
    mode: DenoiserMode = "n2v2"
    axes: str = "YX"
    noise: list[NoiseSpec] = Field(default_factory=list)
    architecture: ArchitectureConfig = Field(default_factory=ArchitectureConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    normalization: Normalization | None = None

    @field_validator("axes")
    @classmethod
    def _check_axes(cls, axes: str) -> str:
        return validate_axes(axes)

    @model_validator(mode="after")
    def _consistent(self) -> DenoiserConfig:
        dims = 3 if "Z" in self.axes else 2
        if self.architecture.spatial_dims != dims:
            raise ValueError(
                f"axes '{self.axes}' are {dims}D but the architecture is "
                f"{self.architecture.spatial_dims}D"
            )
        if self.architecture.in_channels != self.architecture.out_channels:
            raise ValueError("a denoiser has as many output channels as input channels")
        if self.mode in ("n2v", "n2v2") and self.noise:
            raise ValueError(
                f"mode '{self.mode}' learns from the noisy images themselves; synthetic noise "
                "is only used with mode 'dae'"
            )
        if self.mode == "dae" and not self.noise:
            raise ValueError("mode 'dae' needs at least one noise, e.g. gaussian:0.1")
        if not self.architecture.top_skip and self.architecture.depth < 2:
            raise ValueError(
                "without the full-resolution skip connection (n2v2) the network needs depth >= 2"
            )
        div = self.architecture.divisor
        t = self.training
        if t.patch_size % div:
            raise ValueError(
                f"patch size {t.patch_size} is not divisible by {div} (2**depth); "
                f"use {max(div, round(t.patch_size / div) * div)}"
            )
        if dims == 3 and t.patch_size_z % div:
            raise ValueError(
                f"patch depth {t.patch_size_z} is not divisible by {div} (2**depth); "
                f"use {max(div, round(t.patch_size_z / div) * div)}"
            )
        return self

    @property
    def spatial_dims(self) -> int:
        return self.architecture.spatial_dims

    @property
    def n_channels(self) -> int:
        return self.architecture.in_channels


def validate_axes(axes: str) -> str:
    """Check an axes string such as ``YX``, ``ZYX``, ``TYX`` or ``CZYX`` and return it upper-case."""
    axes = axes.strip().upper()
    bad = sorted(set(axes) - set(AXES_LETTERS))
    if bad:
        raise ValueError(
            f"axes '{axes}' contain {', '.join(bad)}; use letters from {AXES_LETTERS} "
            "(S sample, T time, C channel, Z, Y, X)"
        )
    if len(set(axes)) != len(axes):
        raise ValueError(f"axes '{axes}' name an axis twice")
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"axes '{axes}' need both Y and X")
    return axes


def build(cls, **values):
    """Build a config, turning pydantic's validation error into one readable line."""
    try:
        return cls(**values)
    except ValidationError as exc:
        raise InvalidInputError(_one_line(exc)) from None


def parse_config_json(cls, text: str):
    """Read a config from JSON, upgrading older format versions first."""
    import json

    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("the config in the file is not valid JSON (a damaged file?)") from None
    if not isinstance(data, dict):
        raise ValueError("the config in the file is not a JSON object (a damaged file?)")
    data = upgrade_config_dict(data)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"the config in the file is damaged: {_one_line(exc)}") from None


def upgrade_config_dict(data: dict) -> dict:
    """Translate a config written by an older release to the current layout.

    Version 1 is the first layout; translations for later versions go here.
    """
    version = data.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"the model was written by a newer napari-aeseg (format {version}); "
            f"this release reads up to format {FORMAT_VERSION}: upgrade napari-aeseg"
        )
    return data


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
