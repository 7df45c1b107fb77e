"""A trained denoiser: config + network + what is needed to resume training, and inference."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .config import DenoiserConfig, parse_config_json
from .data import Layout, check_axes_match, check_image, guess_axes
from .devices import resolve_device
from .errors import InvalidInputError, ModelFileError
from .model_io import ModelFile, read_model_file, save_model_file, tensors_digest
from .models import UNet, build_network
from .tiling import (
    TileProgress,
    count_tiles,
    iter_predict_tiled,
    run_generator,
    with_flip_averaging,
)

#: an image whose intensity range is this many times wider or narrower than the training
#: data's gets a warning (:meth:`TrainedModel.intensity_note`)
FAR_RANGE = 10.0


@dataclass
class TrainedModel:
    """A trained network and everything saved with it (base of denoisers and segmenters).

    Attributes
    ----------
    config
        The validated configuration, normalisation included.
    network
        The network with the best weights seen during training (on the CPU after loading).
    history
        ``(step, train_loss, val_loss)`` rows of the training so far (``val_loss`` may be NaN).
    trained_steps
        Number of optimisation steps behind the weights.
    optimizer_state, last_weights
        The optimiser state and the weights at the last step, for resuming training.
    name
        A short name for menus (the file stem, or set by the trainer).
    """

    config: Any
    network: UNet
    history: list[tuple[int, float, float]] = field(default_factory=list)
    trained_steps: int = 0
    optimizer_state: dict | None = None
    last_weights: dict[str, torch.Tensor] | None = None
    name: str = "model"

    kind: ClassVar[str] = "model"
    config_class: ClassVar[type]

    def _extra(self) -> dict:
        return {}

    def weights_digest(self) -> str:
        """SHA-256 of the network's weights: tells two models apart whatever their names."""
        return tensors_digest(self.network.state_dict())

    def save(self, path: str | os.PathLike) -> Path:
        """Save to one file (atomically); the conventional suffix is ``.aeseg``."""
        extra = {
            "history": [[s, float(t), float(v)] for s, t, v in self.history],
            "trained_steps": self.trained_steps,
            "name": self.name,
            **self._extra(),
        }
        weights = dict(self.network.state_dict())
        if self.last_weights is not None:
            weights.update({f"__last__/{k}": v for k, v in self.last_weights.items()})
        return save_model_file(
            path,
            ModelFile(
                kind=self.kind,
                config_json=self.config.model_dump_json(),
                weights=weights,
                optimizer=self.optimizer_state,
                extra=extra,
            ),
        )

    @classmethod
    def _build_network(cls, config) -> UNet:
        return build_network(config.architecture)

    @classmethod
    def from_model_file(cls, raw: ModelFile, path: str | os.PathLike):
        if raw.kind != cls.kind:
            raise ModelFileError(f"'{path}' is a {raw.kind} model, but a {cls.kind} is needed here")
        try:
            config = parse_config_json(cls.config_class, raw.config_json)
        except ValueError as exc:
            raise ModelFileError(f"'{path}': {str(exc).splitlines()[0]}") from None
        network = cls._build_network(config)
        best = {k: v for k, v in raw.weights.items() if not k.startswith("__last__/")}
        last = {
            k.removeprefix("__last__/"): v
            for k, v in raw.weights.items()
            if k.startswith("__last__/")
        }
        try:
            network.load_state_dict(best)
        except RuntimeError:
            raise ModelFileError(
                f"'{path}': the weights do not match the network described in the file"
            ) from None
        if not all(bool(torch.isfinite(v).all()) for v in best.values() if v.is_floating_point()):
            raise ModelFileError(
                f"'{path}': the weights hold NaN or infinite values (a training run that "
                "diverged, or a damaged file); train again, with a lower learning rate"
            )
        extra = raw.extra
        try:
            history = [(int(s), float(t), float(v)) for s, t, v in extra.get("history", [])]
            trained_steps = int(extra.get("trained_steps", 0))
        except (TypeError, ValueError, AttributeError):
            raise ModelFileError(f"'{path}': the training record in the file is damaged") from None
        return cls(
            config=config,
            network=network.eval(),
            history=history,
            trained_steps=trained_steps,
            optimizer_state=raw.optimizer,
            last_weights=last or None,
            name=str(extra.get("name") or Path(path).stem),
        )

    @classmethod
    def load(cls, path: str | os.PathLike):
        return cls.from_model_file(read_model_file(path), path)

    def check_layout(self, shape: tuple[int, ...], axes: str | None) -> Layout:
        """Validate an image against this model; the error says what to change."""
        if axes is None:
            axes = self.config.axes if len(self.config.axes) == len(shape) else guess_axes(shape)
        axes = check_axes_match(shape, axes)
        layout = Layout(axes, tuple(shape))
        dims = self.config.architecture.spatial_dims
        if layout.spatial_dims != dims:
            hint = (
                " To process a stack slice by slice with a 2D model, call its Z axis S "
                f"(axes '{axes.replace('Z', 'S')}')."
                if dims == 2 and "S" not in axes
                else (
                    " If the image is a volume, name its depth axis Z (axes "
                    f"'{axes.replace('S' if 'S' in axes else 'T', 'Z', 1)}')."
                    if {"S", "T"} & set(axes) and "Z" not in axes
                    else ""
                )
            )
            others = "".join(a for a in axes if a not in layout.spatial_axes + "C")
            space = f"{layout.spatial_dims}D in space" if others else f"{layout.spatial_dims}D"
            raise InvalidInputError(
                f"the model is {dims}D (trained on axes '{self.config.axes}') but the image is "
                f"{space} (axes '{axes}'{f', {others} not spatial' if others else ''}).{hint}"
            )
        channels = self.config.architecture.in_channels
        if layout.channels != channels:
            raise InvalidInputError(
                f"the model expects {channels} channel(s) but the image has "
                f"{layout.channels} (axes '{axes}', shape {tuple(shape)})"
            )
        return layout

    def iter_predict_samples(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        internal: np.ndarray,
        layout: Layout,
        *,
        out_channels: int,
        tile,
        overlap,
        device: torch.device,
        cancel: Callable[[], bool] | None = None,
    ) -> Generator[TileProgress, None, np.ndarray]:
        """Tiled ``forward`` of every sample of ``internal`` (``(N, C, *S)``), normalised.

        Yields progress over all samples; returns float32 ``(N, out_channels, *S)``.
        Automatic tiles follow the model's training patch (see :func:`.tiling.auto_tile`).
        """
        prepare, _, _ = self.normalizer(layout.spatial_dims)
        divisor = self.config.architecture.divisor
        patch = self.training_patch(layout.spatial_dims)
        options = dict(tile=tile, overlap=overlap, divisor=divisor, device=device)
        per = count_tiles(layout.spatial_shape, patch=patch, **options)
        n = internal.shape[0]
        out = np.empty((n, out_channels, *layout.spatial_shape), np.float32)
        for i in range(n):
            yield from iter_predict_tiled(
                forward,
                internal[i],
                out_channels=out_channels,
                prepare=prepare,
                cancel=cancel,
                progress_offset=i * per,
                progress_total=per * n,
                out=out[i],
                patch=patch,
                **options,
            )
        return out

    def intensity_note(self, image, axes: str | None = None) -> str | None:
        """A warning when an image's intensities are far from those of the training data.

        The model maps its training range (``normalization``: percentiles of the training
        images) to 0..1. An image whose same percentiles span over 10 times more or less, or
        lie wholly outside that range (a 0..1 model on CT numbers, an 8-bit model on 16-bit
        data), gives outputs that mean nothing, silently. Computed on about a million
        pixels; None when the intensities are comparable.
        """
        norm = self.config.normalization
        if norm is None:
            return None
        layout = self.check_layout(tuple(np.shape(image)), axes)
        n = float(np.prod(layout.shape)) / max(1, layout.channels)
        step = max(1, int((n / 1e6) ** (1 / max(1, len(layout.shape) - ("C" in layout.axes)))))
        index = tuple(slice(None) if a == "C" else slice(None, None, step) for a in layout.axes)
        sample = np.asarray(image[index], dtype=np.float64)
        internal = Layout(layout.axes, sample.shape).to_internal(sample)
        for c in range(internal.shape[1]):
            values = internal[:, c]
            values = values[np.isfinite(values)]
            if not values.size:
                continue
            lo, hi = (float(v) for v in np.percentile(values, norm.percentiles))
            low, high = norm.low[c], norm.high[c]
            span = high - low
            a, b = (lo - low) / span, (hi - low) / span
            if hi > lo and (b - a > FAR_RANGE or b - a < 1 / FAR_RANGE or b < 0 or a > 1):
                which = f" in channel {c}" if internal.shape[1] > 1 else ""
                return (
                    f"the image's intensities{which} ({lo:.4g} to {hi:.4g}) are far from those "
                    f"'{self.name}' was trained on ({low:.4g} to {high:.4g}): its results may "
                    "mean nothing; train on images like this one"
                )
        return None

    def training_patch(self, spatial_dims: int) -> tuple[int, ...]:
        """The patch the network was trained on, per spatial axis (``(Z,) Y, X``)."""
        t = self.config.training
        return (t.patch_size_z,) * (spatial_dims == 3) + (t.patch_size, t.patch_size)

    def normalizer(self, spatial_dims: int):
        """The model's intensity normalisation as an in-place function on ``(C, *S)`` tiles."""
        norm = self.config.normalization
        shape_c = (-1,) + (1,) * spatial_dims
        lo = np.asarray(norm.low, np.float32).reshape(shape_c)
        span = (np.asarray(norm.high, np.float32) - np.asarray(norm.low, np.float32)).reshape(
            shape_c
        )

        def prepare(t: np.ndarray) -> np.ndarray:
            t -= lo
            t /= span
            return t

        return prepare, lo, span


@dataclass
class DenoiserModel(TrainedModel):
    """A denoising autoencoder and everything saved with it."""

    name: str = "denoiser"
    kind: ClassVar[str] = "denoiser"
    config_class: ClassVar[type] = DenoiserConfig

    # ------------------------------------------------------------- inference
    def describe(self) -> str:
        c = self.config
        a = c.architecture
        noise = f", noise {' + '.join(str(n) for n in c.noise)}" if c.noise else ""
        return (
            f"{self.name}: {c.mode} denoiser{noise}, axes {c.axes}, {a.spatial_dims}D, "
            f"{a.in_channels} channel(s), depth {a.depth}, {a.base_channels} base channels, "
            f"{self.trained_steps} steps trained"
        )

    def iter_denoise(
        self,
        image: np.ndarray,
        *,
        axes: str | None = None,
        tile: int | Sequence[int] | str = "auto",
        overlap: int | Sequence[int] | str = "auto",
        device: str | torch.device = "auto",
        cancel: Callable[[], bool] | None = None,
        tta: bool = False,
    ) -> Generator[TileProgress, None, np.ndarray]:
        """Denoise tile by tile, yielding progress; returns float32 in the input's layout.

        ``tta`` averages the predictions of all mirror images of each tile (4 passes in 2D,
        8 in 3D): slower, slightly cleaner.
        """
        image = check_image(image)
        layout = self.check_layout(image.shape, axes)
        dev = resolve_device(device)
        net = self.network.to(dev).eval()
        internal = layout.to_internal(image)
        _, lo, span = self.normalizer(layout.spatial_dims)
        out = yield from self.iter_predict_samples(
            with_flip_averaging(net, layout.spatial_dims) if tta else net,
            internal,
            layout,
            out_channels=layout.channels,
            tile=tile,
            overlap=overlap,
            device=dev,
            cancel=cancel,
        )
        out *= span[None]
        out += lo[None]
        return layout.from_internal(out)

    def denoise(self, image: np.ndarray, **kwargs) -> np.ndarray:
        """Denoise an image; see :meth:`iter_denoise` for the options."""
        return run_generator(self.iter_denoise(image, **kwargs))


def load_denoiser(path: str | os.PathLike) -> DenoiserModel:
    """Load a denoiser model file (never unpickles)."""
    return DenoiserModel.load(path)
