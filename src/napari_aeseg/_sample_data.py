"""Sample data (File > Open Sample > napari-aeseg): real and synthetic images to try on."""

from __future__ import annotations

from .core.noise import add_noise
from .core.samples import load_sample
from .core.synthetic import synthetic_nuclei

#: ``metadata`` of a sample's ground-truth labels: offered for scoring, never as scribbles
GROUND_TRUTH_METADATA = {"napari_aeseg": "ground truth"}


def nuclei_2d() -> list[tuple]:
    """Real noisy fluorescence nuclei (512x512) and their ground-truth instance labels."""
    return [
        (load_sample("nuclei_2d"), {"name": "nuclei", "colormap": "gray"}, "image"),
        (
            load_sample("nuclei_2d_labels"),
            {
                "name": "nuclei ground truth",
                "opacity": 0.4,
                "visible": False,
                "metadata": dict(GROUND_TRUTH_METADATA),
            },
            "labels",
        ),
    ]


#: voxel size of the 3D nuclei stack in micrometres (Z, Y, X); see sample_data/README.md
NUCLEI_3D_VOXEL_UM = (0.29, 0.26, 0.26)


def nuclei_3d() -> list[tuple]:
    """A real 3D stack of nuclei (60x256x256, ZYX), with its voxel size in micrometres."""
    meta = {
        "name": "nuclei 3D",
        "colormap": "gray",
        "scale": NUCLEI_3D_VOXEL_UM,
        "units": "µm",
        "axis_labels": ("z", "y", "x"),
    }
    return [(load_sample("nuclei_3d"), meta, "image")]


def retina() -> list[tuple]:
    """A colour retinal fundus photograph (512x512 RGB), a medical image."""
    return [(load_sample("retina"), {"name": "retina", "rgb": True}, "image")]


def _synthetic(shape: tuple[int, ...], name: str) -> list[tuple]:
    sample = synthetic_nuclei(shape, seed=0)
    noisy = add_noise(sample.clean, gaussian=0.08, poisson=60, seed=1, value_range=(0.0, 1.0))
    return [
        (sample.clean, {"name": f"{name} clean", "colormap": "gray", "visible": False}, "image"),
        (noisy, {"name": f"{name} noisy", "colormap": "gray"}, "image"),
        (
            sample.labels,
            {
                "name": f"{name} ground truth",
                "opacity": 0.4,
                "visible": False,
                "metadata": dict(GROUND_TRUTH_METADATA),
            },
            "labels",
        ),
    ]


def synthetic_2d() -> list[tuple]:
    """Synthetic nuclei (256x256): clean image, noisy image and instance labels."""
    return _synthetic((256, 256), "synthetic")


def synthetic_3d() -> list[tuple]:
    """Synthetic 3D nuclei (48x128x128): clean image, noisy image and instance labels."""
    return _synthetic((48, 128, 128), "synthetic 3D")


__all__ = ["nuclei_2d", "nuclei_3d", "retina", "synthetic_2d", "synthetic_3d"]
