"""Convenience functions of the public API (see the package docstring)."""

from __future__ import annotations

import os

import numpy as np

from .core.denoiser import DenoiserModel
from .core.errors import ModelFileError
from .core.model_io import read_model_file


def load_model(path: str | os.PathLike):
    """Load any napari-aeseg model file; returns a :class:`DenoiserModel` (or a segmenter)."""
    raw = read_model_file(path)
    if raw.kind == "denoiser":
        return DenoiserModel.from_model_file(raw, path)
    if raw.kind == "segmenter":
        from .core.segmenter import SegmenterModel

        return SegmenterModel.from_model_file(raw, path)
    raise ModelFileError(f"'{path}' holds a model of unknown kind '{raw.kind}'")


def denoise(model: DenoiserModel | str | os.PathLike, image: np.ndarray, **options) -> np.ndarray:
    """Denoise ``image`` with a model or a model file; options as :meth:`DenoiserModel.denoise`."""
    if not isinstance(model, DenoiserModel):
        model = DenoiserModel.load(model)
    return model.denoise(image, **options)
