import numpy as np
import pytest
import torch

from napari_aeseg.core.config import NoiseSpec
from napari_aeseg.core.noise import (
    add_noise,
    add_noise_torch,
    apply_blind_spot,
    blind_spot_coordinates,
    noise_to_signal,
    psnr,
)


def test_blind_spot_coordinates_are_stratified():
    g = torch.Generator().manual_seed(0)
    coords = blind_spot_coordinates((2, 3, 64, 64), 1 / 16, g)
    assert coords.shape == (2 * 3 * 256, 4)
    # one masked pixel in every 4x4 box of every (batch, channel)
    boxes = {(b, c, y // 4, x // 4) for b, c, y, x in coords.tolist()}
    assert len(boxes) == 2 * 3 * 256


@pytest.mark.parametrize("replacement", ["random", "median"])
def test_replacement_never_uses_centre(replacement):
    g = torch.Generator().manual_seed(1)
    if replacement == "random":
        x = torch.arange(2 * 1 * 32 * 32, dtype=torch.float32).reshape(2, 1, 32, 32)
    else:  # continuous values: a median equal to the centre has probability zero
        x = torch.rand(2, 1, 32, 32, generator=g) * 2000
    coords = blind_spot_coordinates(x.shape, 0.05, g)
    out = apply_blind_spot(x, coords, radius=2, replacement=replacement, generator=g)
    idx = tuple(coords.T)
    assert not torch.any(out[idx] == x[idx])
    # values come from the 5x5 neighbourhood: every value differs from the centre by at most 2 rows + 2 cols
    if replacement == "random":
        diff = (out[idx] - x[idx]).abs()
        assert torch.all(diff <= 2 * 32 + 2)
    unmasked = torch.ones_like(x, dtype=torch.bool)
    unmasked[idx] = False
    assert torch.equal(out[unmasked], x[unmasked])


def test_median_replacement_is_neighbourhood_median():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 1, 9, 9)
    coords = torch.tensor([[0, 0, 4, 4]])
    out = apply_blind_spot(x, coords, radius=1, replacement="median", generator=g)
    nb = x[0, 0, 3:6, 3:6].flatten()
    nb = torch.cat([nb[:4], nb[5:]])
    assert out[0, 0, 4, 4] == nb.median()


def test_blind_spot_3d():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 1, 8, 16, 16)
    coords = blind_spot_coordinates(x.shape, 0.02, g)
    out = apply_blind_spot(x, coords, radius=2, replacement="median", generator=g)
    assert coords.shape[1] == 5 and (out != x).sum() > 0


def test_add_noise_levels():
    clean = np.zeros((256, 256), np.float32)
    clean[:, 128:] = 1.0
    noisy = add_noise(clean, gaussian=0.1, seed=0)
    assert np.std(noisy[:, :128]) == pytest.approx(0.1, rel=0.05)
    pois = add_noise(clean, poisson=10, seed=0)
    assert np.var(pois[:, 128:]) == pytest.approx(0.1, rel=0.1)  # var = 1/photons
    sp = add_noise(clean, salt_pepper=0.1, seed=0)
    assert np.mean(sp[:, :128] == 1.0) == pytest.approx(0.05, abs=0.01)
    assert psnr(clean, noisy, 1.0) == pytest.approx(20, abs=0.5)


def test_torch_noise_reproducible():
    x = torch.full((2, 1, 16, 16), 0.5)
    specs = [NoiseSpec(kind="poisson", level=20), NoiseSpec(kind="gaussian", level=0.1)]
    a = add_noise_torch(x, specs, torch.Generator().manual_seed(0))
    b = add_noise_torch(x, specs, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_noise_to_signal_ratio():
    from napari_aeseg.core.synthetic import synthetic_nuclei

    clean = synthetic_nuclei((192, 192), seed=7).clean
    signal = float(np.std(clean))
    for sigma in (0.05, 0.15, 0.4):
        noisy = add_noise(clean, gaussian=sigma, seed=1, value_range=(0.0, 1.0))
        assert noise_to_signal([noisy]) == pytest.approx(sigma / signal, rel=0.1)
        # a ratio: the images' scale and offset do not matter
        assert noise_to_signal([noisy * 300 + 20]) == pytest.approx(noise_to_signal([noisy]))
    # pieces of one image pool to about the whole image's ratio; 3D works the same way
    noisy = add_noise(clean, gaussian=0.15, seed=1, value_range=(0.0, 1.0))
    pieces = [noisy[:96, :96], noisy[96:, 96:], noisy[:96, 96:]]
    assert noise_to_signal(pieces) == pytest.approx(0.15 / signal, rel=0.15)
    volume = synthetic_nuclei((24, 64, 64), seed=8).clean
    noisy3d = add_noise(volume, gaussian=0.15, seed=2, value_range=(0.0, 1.0))
    assert noise_to_signal([noisy3d]) == pytest.approx(0.15 / np.std(volume), rel=0.15)
    # clean images are far below 1, noise alone far above
    assert noise_to_signal([clean]) < 0.05
    white = np.random.default_rng(0).normal(size=(128, 128)).astype(np.float32)
    assert noise_to_signal([white]) > 5
    assert noise_to_signal([]) == 0.0


def test_noise_to_signal_with_shot_noise():
    """Poisson noise grows with the brightness: the ratio reads the pixels' average noise,
    not the dim background's (one median over all pixels read 33-37 % low here)."""
    from napari_aeseg.core.synthetic import synthetic_nuclei

    clean = synthetic_nuclei((192, 192), seed=7).clean
    volume = synthetic_nuclei((24, 64, 64), seed=8).clean
    for image, rel in ((clean, 0.1), (volume, 0.2)):
        for photons in (10, 20):
            noisy = add_noise(image, poisson=photons, seed=1, value_range=(0.0, 1.0))
            true = np.std(noisy - image) / np.std(image)
            assert noise_to_signal([noisy]) == pytest.approx(true, rel=rel)
