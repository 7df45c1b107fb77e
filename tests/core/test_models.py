import pytest
import torch

from napari_aeseg.core.config import ArchitectureConfig
from napari_aeseg.core.models import MaxBlurPool, build_network, count_parameters


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("n2v2", [False, True])
def test_unet_shapes(dims, n2v2):
    arch = ArchitectureConfig(
        spatial_dims=dims,
        in_channels=2,
        out_channels=2,
        depth=2,
        base_channels=8,
        blur_pool=n2v2,
        top_skip=not n2v2,
    )
    net = build_network(arch).eval()
    x = torch.randn(2, 2, *([16] * dims))
    with torch.inference_mode():
        y = net(x)
    assert y.shape == x.shape
    feats = net.encoder(x)
    assert [f.shape[1] for f in feats] == [8, 16, 32]
    assert feats[-1].shape[2:] == (4,) * dims


def test_n2v2_has_no_top_skip():
    with_skip = build_network(ArchitectureConfig(base_channels=8, top_skip=True))
    without = build_network(ArchitectureConfig(base_channels=8, top_skip=False))
    # the top decoder block sees only the upsampled path, half the channels
    assert (
        without.decoder.blocks[-1][0].in_channels
        == with_skip.decoder.blocks[-1][0].in_channels // 2
    )


def test_blur_pool_halves_and_is_smooth():
    pool = MaxBlurPool(2, 1)
    x = torch.zeros(1, 1, 8, 8)
    x[..., 1::2] = 1.0  # stripes that plain max pooling would alias
    y = pool(x)
    assert y.shape == (1, 1, 4, 4)
    assert torch.allclose(y, torch.ones_like(y))


def test_segmenter_head_can_change_outputs():
    net = build_network(ArchitectureConfig(base_channels=8), out_channels=3)
    assert net(torch.zeros(1, 1, 16, 16)).shape == (1, 3, 16, 16)
    assert count_parameters(net) > 1000
