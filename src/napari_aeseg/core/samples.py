"""The images shipped in ``sample_data/``, reachable from a source checkout and from a wheel."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import ImageReadError


@dataclass(frozen=True)
class Sample:
    key: str
    filename: str
    title: str
    axes: str


SAMPLES = {
    s.key: s
    for s in (
        Sample("nuclei_2d", "real_nuclei_2d.tif", "Nuclei 2D (real, noisy fluorescence)", "YX"),
        Sample("nuclei_2d_labels", "real_nuclei_2d_labels.tif", "Nuclei 2D ground truth", "YX"),
        Sample("nuclei_3d", "real_3d_stack.tif", "Nuclei 3D stack (real)", "ZYX"),
        Sample("retina", "medical_2d.tif", "Retinal fundus photograph (RGB)", "YXC"),
    )
}


def sample_path(key: str) -> Path:
    """Path of a bundled sample file (``nuclei_2d``, ``nuclei_3d``, ``retina``...)."""
    if key not in SAMPLES:
        raise ImageReadError(f"unknown sample '{key}'; choose one of: {', '.join(SAMPLES)}")
    ref = resources.files("napari_aeseg") / "sample_data" / SAMPLES[key].filename
    path = Path(str(ref))
    if not path.is_file():
        raise ImageReadError(
            f"sample file {SAMPLES[key].filename} is missing from the installation"
        )
    return path


def load_sample(key: str) -> np.ndarray:
    """The pixels of a bundled sample."""
    import tifffile

    return tifffile.imread(sample_path(key))
