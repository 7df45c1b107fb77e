"""CUDA paths: AMP training, data kept on the GPU, tiled inference on the GPU (skipped without one)."""

import numpy as np
import pytest
import torch

from napari_aeseg.core.devices import resolve_device
from napari_aeseg.core.noise import psnr
from napari_aeseg.core.training import DenoiserTrainer, make_denoiser_config

pytestmark = pytest.mark.gpu


def test_auto_picks_cuda():
    assert resolve_device("auto").type == "cuda"


def test_amp_training_and_tiled_inference_on_cuda(nuclei_2d):
    clean, noisy, _ = nuclei_2d
    cfg = make_denoiser_config(
        noisy.shape, steps=300, base_channels=16, patch_size=64, batch_size=16, learning_rate=1e-3
    )
    trainer = DenoiserTrainer([noisy], cfg, device="cuda")
    assert trainer.amp_dtype in (torch.bfloat16, torch.float16)
    assert trainer.sampler.arrays[0].device.type == "cuda"
    for _ in trainer.run():
        pass
    model = trainer.result()
    gpu = model.denoise(noisy, device="cuda", tile=64, overlap=16)
    cpu = model.denoise(noisy, device="cpu", tile=64, overlap=16)
    assert gpu.dtype == np.float32
    assert np.abs(gpu - cpu).max() < 1e-3
    assert psnr(clean, gpu, 1.0) > psnr(clean, noisy, 1.0) + 3
