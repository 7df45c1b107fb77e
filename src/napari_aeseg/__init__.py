"""napari-aeseg: denoise and segment images with autoencoders trained on your own data.

The Python API (nothing heavy is imported until a name is used)::

    from napari_aeseg import train_denoiser, load_model, add_noise

    model = train_denoiser(noisy, mode="n2v2", axes="YX", steps=2000)
    model.save("nuclei.aeseg")
    clean = load_model("nuclei.aeseg").denoise(noisy)
"""

from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"

#: torch's CPU thread count when this package was imported, if torch was loaded by then: a
#: different count later was set by the user and is kept (see ``core.devices``)
_TORCH_THREADS_AT_IMPORT = (
    sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
)

_API = {
    "train_denoiser": "napari_aeseg.core.training",
    "make_denoiser_config": "napari_aeseg.core.training",
    "DenoiserTrainer": "napari_aeseg.core.training",
    "TrainingProgress": "napari_aeseg.core.training",
    "DenoiserModel": "napari_aeseg.core.denoiser",
    "load_denoiser": "napari_aeseg.core.denoiser",
    "load_model": "napari_aeseg.api",
    "denoise": "napari_aeseg.api",
    "train_segmenter": "napari_aeseg.core.segmenter",
    "make_segmenter_config": "napari_aeseg.core.segmenter",
    "SegmenterTrainer": "napari_aeseg.core.segmenter",
    "SegmenterModel": "napari_aeseg.core.segmenter",
    "load_segmenter": "napari_aeseg.core.segmenter",
    "PixelClassifier": "napari_aeseg.core.features",
    "encoder_features": "napari_aeseg.core.features",
    "classic_features": "napari_aeseg.core.features",
    "score_instances": "napari_aeseg.core.metrics",
    "instances_from_probabilities": "napari_aeseg.core.postprocess",
    "DenoiserConfig": "napari_aeseg.core.config",
    "NoiseSpec": "napari_aeseg.core.config",
    "add_noise": "napari_aeseg.core.noise",
    "psnr": "napari_aeseg.core.noise",
    "synthetic_nuclei": "napari_aeseg.core.synthetic",
    "read_image": "napari_aeseg.core.image_io",
    "write_tiff": "napari_aeseg.core.image_io",
    "load_sample": "napari_aeseg.core.samples",
    "AesegError": "napari_aeseg.core.errors",
    "InvalidInputError": "napari_aeseg.core.errors",
    "ModelFileError": "napari_aeseg.core.errors",
    "ImageReadError": "napari_aeseg.core.errors",
    "OutputError": "napari_aeseg.core.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'napari_aeseg' has no attribute '{name}'")


def __dir__():
    return sorted(__all__)
