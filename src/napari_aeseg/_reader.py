"""Reader: a dropped ``.aeseg`` model file joins the session's models (no layer is added)."""

from __future__ import annotations

import os
from pathlib import Path

from .core.model_io import MODEL_SUFFIX


def get_reader(path: str | os.PathLike | list):
    """Return :func:`read_models` for ``.aeseg`` files, ``None`` for anything else."""
    paths = path if isinstance(path, list | tuple) else [path]
    if not paths or not all(
        str(p).lower().endswith(MODEL_SUFFIX) and Path(p).is_file() for p in paths
    ):
        return None
    return read_models


def read_models(path: str | os.PathLike | list, **_) -> list[tuple]:
    """Load the model file(s) into the session; ``[(None,)]`` tells napari no layer comes.

    A file that is not a usable model raises :class:`~napari_aeseg.core.errors.ModelFileError`,
    whose message napari shows.
    """
    from ._widgets.session import SESSION
    from .api import load_model

    paths = path if isinstance(path, list | tuple) else [path]
    for p in paths:
        model = load_model(p)
        if SESSION.find_same(model) is None:  # the same file dropped again adds nothing
            SESSION.add_model(model)
    return [(None,)]
