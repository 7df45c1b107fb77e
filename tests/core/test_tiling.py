import numpy as np
import pytest
import torch

from napari_aeseg.core.config import ArchitectureConfig
from napari_aeseg.core.errors import InvalidInputError
from napari_aeseg.core.models import build_network
from napari_aeseg.core.tiling import (
    Cancelled,
    auto_tile,
    count_tiles,
    iter_predict_tiled,
    plan_axis,
    resolve_tiling,
    run_generator,
    small_patch_limits,
)


def _net(dims=2, seed=0):
    torch.manual_seed(seed)
    arch = ArchitectureConfig(spatial_dims=dims, depth=2, base_channels=4, batch_norm=False)
    return build_network(arch).eval()


def _untiled(net, img):
    x = torch.from_numpy(img[None].astype(np.float32))
    with torch.inference_mode():
        return net(x)[0].numpy()


def _predict(net, img, **options):
    """Tiled prediction of one output channel on the CPU, to the end."""
    return run_generator(
        iter_predict_tiled(
            net, img, out_channels=1, divisor=4, device=torch.device("cpu"), **options
        )
    )


@pytest.mark.parametrize("length", [37, 64, 200, 513])
def test_plan_covers_axis_and_weights_sum_positive(length):
    plan = plan_axis(length, 64, 16, 4)
    padded = -(-length // 4) * 4
    assert plan.starts[0] == 0 and plan.starts[-1] + plan.tile == padded
    assert plan.tile <= 64 or length <= 64
    assert plan.weight_sum.min() > 0.0
    # tiles start on the pooling grid and are multiples of it
    assert plan.tile % 4 == 0 and all(s % 4 == 0 for s in plan.starts)


@pytest.mark.parametrize("shape", [(200, 232), (201, 157)])
def test_tiled_matches_untiled_without_seams(shape):
    net = _net()
    img = np.random.default_rng(0).random((1, *shape)).astype(np.float32)
    padded = [int(np.ceil(s / 4) * 4) for s in shape]
    ref = _untiled(
        net, np.pad(img, [(0, 0)] + [(0, p - s) for p, s in zip(padded, shape)], mode="reflect")
    )
    ref = ref[(slice(None), *[slice(0, s) for s in shape])]
    out = _predict(net, img, tile=96, overlap=48)
    assert out.shape == (1, *shape) and out.dtype == np.float32
    inner = (slice(None), slice(8, -8), slice(8, -8))  # away from the image's own border
    err = np.abs(out - ref)[inner]
    # a random (untrained) network is more sensitive to missing context than a trained one
    assert err.max() < 0.04 * np.abs(ref).max()
    assert err.mean() < 0.002 * np.abs(ref).max()


def test_3d_tiling_and_progress():
    net = _net(dims=3)
    img = np.random.default_rng(1).random((1, 20, 40, 44)).astype(np.float32)
    gen = iter_predict_tiled(
        net,
        img,
        out_channels=1,
        divisor=4,
        device=torch.device("cpu"),
        tile=(12, 24, 24),
        overlap=(4, 8, 8),
        tile_batch=1,
    )
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as done:
            out = done.value
            break
    assert out.shape == img.shape
    assert [s.done for s in steps] == list(range(1, len(steps) + 1))
    assert steps[-1].total == len(steps) > 1


def test_cancel_stops_between_tiles():
    net = _net()
    img = np.zeros((1, 128, 128), np.float32)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        _predict(net, img, tile=32, overlap=8, cancel=cancel, tile_batch=1)


def test_input_is_never_modified():
    net = _net()
    img = np.random.default_rng(2).random((1, 64, 64)).astype(np.float32)
    before = img.copy()
    _predict(net, img, tile=32, overlap=8, prepare=lambda t: t.__isub__(0.5))
    assert np.array_equal(img, before)


def test_bad_tile_size():
    with pytest.raises(InvalidInputError, match="at least 4"):
        _predict(_net(), np.zeros((1, 32, 32), np.float32), tile=2)
    # an overlap over half the tile is refused, not quietly lowered
    with pytest.raises(InvalidInputError, match="use at most 16"):
        _predict(_net(), np.zeros((1, 64, 64), np.float32), tile=32, overlap=20)
    # an axis that fits in one tile uses no overlap: nothing to refuse
    _predict(_net(), np.zeros((1, 24, 24), np.float32), tile=32, overlap=20)


def test_flip_averaging_is_the_mean_of_mirrored_predictions():
    from napari_aeseg.core.tiling import with_flip_averaging

    net = _net()
    x = torch.rand(1, 1, 32, 48)
    with torch.inference_mode():
        got = with_flip_averaging(net, 2)(x)
        flips = [[], [2], [3], [2, 3]]
        want = sum(torch.flip(net(torch.flip(x, f)), f) if f else net(x) for f in flips) / 4
        assert torch.allclose(got, want, atol=1e-6)
        assert torch.equal(with_flip_averaging(lambda t: t, 2)(x), x)


def test_small_tiles_are_batched_on_the_cpu_with_the_same_result():
    net = _net()
    img = np.random.default_rng(3).random((1, 96, 80)).astype(np.float32)
    one = _predict(net, img, tile=16, overlap=8, tile_batch=1)
    steps = list(
        iter_predict_tiled(
            net, img, out_channels=1, divisor=4, device=torch.device("cpu"), tile=16, overlap=8
        )
    )
    batched = _predict(net, img, tile=16, overlap=8)
    # 11 x 9 tiles of 16 x 16 fit in one call; the progress still counts tiles
    assert len(steps) == 1 and steps[-1].done == steps[-1].total == 99
    np.testing.assert_allclose(batched, one, atol=1e-5)


def test_automatic_tiles_follow_a_small_training_patch():
    cpu = torch.device("cpu")
    assert auto_tile((512, 512), cpu) == (384, 384)
    assert auto_tile((512, 512), cpu, patch=(64, 64)) == (384, 384)
    assert auto_tile((512, 512), cpu, patch=(32, 32)) == (384, 384)
    assert auto_tile((512, 512), cpu, patch=(16, 16)) == (16, 16)
    assert auto_tile((64, 256, 256), cpu, patch=(16, 64, 64)) == (64, 128, 128)
    assert auto_tile((64, 256, 256), cpu, patch=(8, 32, 32)) == (8, 128, 128)
    assert auto_tile((64, 256, 256), cpu, patch=(8, 16, 64)) == (8, 16, 128)
    # tiles that the user sets are theirs
    n = count_tiles((64, 64), tile=32, overlap=8, divisor=4, device=cpu, patch=(8, 8))
    assert n == 9
    assert count_tiles((64, 64), tile="auto", overlap="auto", divisor=4, device=cpu) == 1
    # a small patch: tiles of its size, the overlap at most half of them
    n = count_tiles((64, 64), tile="auto", overlap="auto", divisor=4, device=cpu, patch=(16, 16))
    assert n == 7 * 7


@pytest.mark.parametrize("divisor, patch", [(8, (8, 8)), (16, (16, 16)), (4, (4, 32, 32))])
def test_tiles_of_a_patch_as_small_as_the_divisor_still_overlap(divisor, patch):
    # tiles start on the divisor's grid: a tile of one divisor would sit edge to edge
    shape = (32, 128, 128)[-len(patch) :]
    cpu = torch.device("cpu")
    tiles, _ = resolve_tiling(
        shape, tile="auto", overlap="auto", divisor=divisor, device=cpu, patch=patch
    )
    limits = small_patch_limits(len(patch))
    for i in [i for i, p in enumerate(patch) if p < limits[i]]:
        assert tiles[i] == 2 * divisor
        plan = plan_axis(shape[i], tiles[i], 64, divisor)
        assert len(plan.starts) > 1
        assert all(b - a < plan.tile for a, b in zip(plan.starts, plan.starts[1:]))


def test_a_wide_overlap_with_automatic_tiles_is_cut_not_refused():
    cpu = torch.device("cpu")
    n = count_tiles((128, 128), tile="auto", overlap=32, divisor=4, device=cpu, patch=(16, 16))
    assert n == count_tiles(
        (128, 128), tile="auto", overlap="auto", divisor=4, device=cpu, patch=(16, 16)
    )
    with pytest.raises(InvalidInputError, match="more than half"):
        count_tiles((128, 128), tile=16, overlap=32, divisor=4, device=cpu)
