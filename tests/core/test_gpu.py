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


def test_segmenter_trains_and_segments_on_cuda(nuclei_2d, two_crops):
    """Masks in two marked crops, trained and applied on the GPU: the result matches the CPU's
    and finds the objects outside the crops."""
    from napari_aeseg.core.metrics import score_instances
    from napari_aeseg.core.segmenter import train_segmenter

    _, noisy, truth = nuclei_2d
    region = two_crops
    seg = train_segmenter(
        noisy,
        np.where(region, truth, 0),
        regions=region,
        labels_kind="instances",
        steps=200,
        base_channels=16,
        patch_size=32,
        batch_size=8,
        learning_rate=3e-3,
        device="cuda",
    )
    gpu = seg.segment(noisy, device="cuda", tile=64, overlap=16)
    cpu = seg.segment(noisy, device="cpu", tile=64, overlap=16)
    # cuDNN convolutions run in TF32 by default: 2e-3 seen on an H200
    assert np.abs(gpu.probabilities - cpu.probabilities).max() < 1e-2
    assert score_instances(truth, gpu.labels).ap > 0.6
    outside = ~region & (truth > 0)
    assert (gpu.labels[outside] > 0).mean() > 0.8
