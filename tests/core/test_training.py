import math

import numpy as np
import pytest

from napari_aeseg.core.denoiser import DenoiserModel
from napari_aeseg.core.errors import InvalidInputError, TrainingCancelled
from napari_aeseg.core.noise import psnr
from napari_aeseg.core.training import DenoiserTrainer, make_denoiser_config, train_denoiser


def _train(images, tiny, **kw):
    opts = {**tiny, **kw}
    return train_denoiser(images, device="cpu", **opts)


@pytest.mark.parametrize("mode", ["n2v2", "n2v"])
def test_blind_spot_improves_psnr_without_clean_data(nuclei_2d, tiny, mode):
    clean, noisy, _ = nuclei_2d
    model = _train(noisy, tiny, mode=mode, steps=250, base_channels=16, depth=2)
    out = model.denoise(noisy, device="cpu")
    before, after = psnr(clean, noisy, 1.0), psnr(clean, out, 1.0)
    assert out.dtype == np.float32 and out.shape == noisy.shape
    assert after > before + 3.0, (before, after)


def test_dae_on_synthetic_noise_improves_psnr(nuclei_2d, tiny):
    clean, noisy, _ = nuclei_2d
    model = _train(clean, tiny, mode="dae", noise="gaussian:0.15", steps=150)
    out = model.denoise(noisy, device="cpu")
    assert psnr(clean, out, 1.0) > psnr(clean, noisy, 1.0) + 4.0


def test_output_keeps_intensity_scale(nuclei_2d, tiny):
    _, noisy, _ = nuclei_2d
    img = (noisy * 3000 + 500).clip(0, 65535).astype(np.uint16)
    model = _train(img, tiny, steps=1)
    model.network.forward = lambda x: x  # identity: normalise -> network -> denormalise
    out = model.denoise(img, device="cpu", tile=48, overlap=16)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, img, rtol=1e-5, atol=0.05)


def test_seed_makes_runs_reproducible(nuclei_2d, tiny):
    _, noisy, _ = nuclei_2d
    a = _train(noisy, tiny, steps=6, seed=7)
    b = _train(noisy, tiny, steps=6, seed=7)
    c = _train(noisy, tiny, steps=6, seed=8)
    assert [h[1] for h in a.history] == [h[1] for h in b.history]
    assert [h[1] for h in a.history] != [h[1] for h in c.history]


def test_progress_stop_and_continue(nuclei_2d, tiny):
    _, noisy, _ = nuclei_2d
    cfg = make_denoiser_config(noisy.shape, steps=20, **tiny)
    trainer = DenoiserTrainer([noisy], cfg, device="cpu")
    seen = []
    for p in trainer.run():
        seen.append(p)
        if p.step == 5:
            trainer.stop()
    assert seen[-1].step == 5 and seen[-1].total_steps == 20
    assert seen[0].steps_per_second >= 0 and math.isfinite(seen[-1].eta_seconds)
    state_before = trainer.optimizer.state_dict()["state"][0]["step"].item()
    rest = list(trainer.run())  # Continue: same optimiser, picks up at step 6
    assert rest[0].step == 6 and rest[-1].step == 20
    assert trainer.optimizer.state_dict()["state"][0]["step"].item() == state_before + 15
    assert any(p.val_loss is not None for p in rest)
    trainer.extend(5)
    more = list(trainer.run())
    assert [p.step for p in more] == [21, 22, 23, 24, 25]


def test_result_before_any_step_refused(nuclei_2d, tiny):
    _, noisy, _ = nuclei_2d
    trainer = DenoiserTrainer(
        [noisy], make_denoiser_config(noisy.shape, steps=5, **tiny), device="cpu"
    )
    with pytest.raises(TrainingCancelled):
        trainer.result()


def test_resume_from_file_keeps_optimizer_and_history(nuclei_2d, tiny, tmp_path):
    _, noisy, _ = nuclei_2d
    first = _train(noisy, tiny, steps=8)
    first.save(tmp_path / "m.aeseg")
    loaded = DenoiserModel.load(tmp_path / "m.aeseg")
    cfg = loaded.config.model_copy(deep=True)
    cfg.training.steps = 12
    trainer = DenoiserTrainer([noisy], cfg, device="cpu", model=loaded)
    assert trainer.step == 8
    assert trainer.optimizer.state_dict()["state"][0]["step"].item() == 8
    model = trainer.run()
    steps = [p.step for p in model]
    assert steps == [9, 10, 11, 12]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "rmsprop"])
@pytest.mark.parametrize("loss", ["l1"])
def test_optimizers_and_losses(nuclei_2d, tiny, optimizer, loss):
    _, noisy, _ = nuclei_2d
    model = _train(noisy, tiny, steps=3, optimizer=optimizer, loss=loss, scheduler="plateau")
    assert model.trained_steps == 3 and math.isfinite(model.history[-1][1])


def test_3d_and_time_series(nuclei_3d, tiny):
    clean, noisy, _ = nuclei_3d
    model = _train(noisy, tiny, steps=60, patch_size=32, patch_size_z=8, mode="n2v", axes="ZYX")
    out = model.denoise(noisy, device="cpu")
    assert out.shape == noisy.shape
    assert psnr(clean, out, 1.0) > psnr(clean, noisy, 1.0)
    frames = _train(noisy[:4], tiny, steps=3, axes="TYX")
    assert frames.config.spatial_dims == 2
    assert frames.denoise(noisy[:2], axes="TYX", device="cpu").shape == (2, 64, 64)


def test_multichannel(tiny):
    rng = np.random.default_rng(0)
    img = rng.random((48, 48, 2)).astype(np.float32)
    model = _train(img, tiny, steps=2, axes="YXC")
    assert model.config.n_channels == 2
    assert model.denoise(img, device="cpu").shape == img.shape


@pytest.mark.parametrize(
    ("image", "axes", "message"),
    [
        (
            np.zeros((20, 20), np.float32) + np.eye(20, dtype=np.float32),
            "YX",
            "smaller than the patch size 32",
        ),
        (np.full((64, 64), 3.0, np.float32), "YX", "constant"),
        (np.zeros((64, 64, 3), np.uint8), "YX", "RGB"),
        (np.zeros((64, 64), np.float32), "ZYX", "name 3 axes but the image has 2"),
        # one 3D image among 2D ones: the error says which
        (
            [np.eye(64, dtype=np.float32), np.ones((8, 64, 64), np.float32)],
            "YX",
            "image 2: axes 'YX' name 2 axes but the image has 3",
        ),
    ],
)
def test_bad_training_input(image, axes, message, tiny):
    with pytest.raises(InvalidInputError, match=message):
        _train(image, tiny, steps=1, axes=axes)


def test_model_refuses_wrong_dims_and_channels(nuclei_2d, nuclei_3d, tiny):
    _, noisy, _ = nuclei_2d
    model = _train(noisy, tiny, steps=1)
    with pytest.raises(InvalidInputError, match="'SYX'"):
        model.denoise(nuclei_3d[1], axes="ZYX")
    with pytest.raises(InvalidInputError, match="expects 1 channel"):
        model.denoise(np.zeros((32, 32, 3), np.float32), axes="YXC")
    # the hint works: slice by slice
    assert model.denoise(nuclei_3d[1][:2], axes="SYX", device="cpu").shape == (2, 64, 64)
    # a 3D model on a time series: the message says which axes are not spatial
    model3d = _train(nuclei_3d[1], tiny, steps=1, axes="ZYX", patch_size_z=8)
    with pytest.raises(InvalidInputError, match=r"2D in space \(axes 'TYX', T not spatial\)"):
        model3d.denoise(nuclei_3d[1], axes="TYX")


def test_stop_before_run_is_kept_and_best_model_is_cheap(nuclei_2d, tiny):
    _, noisy, _ = nuclei_2d
    trainer = DenoiserTrainer(
        [noisy], make_denoiser_config(noisy.shape, steps=4, **tiny), device="cpu"
    )
    trainer.stop()
    with pytest.raises(TrainingCancelled):
        list(trainer.run())  # stopped before the first step: nothing to return
    assert trainer.step == 0
    steps = [p.step for p in trainer.run()]  # the stop applied to that run only
    assert steps == [1, 2, 3, 4]
    preview = trainer.best_model()
    assert preview.optimizer_state is None and preview.trained_steps == 4


def test_a_network_of_small_patches_denoises_in_tiles_of_its_patch(nuclei_2d, tiny):
    # trained on 8 x 8 patches, every pixel it saw was near the zero-padded border: on the
    # whole image at once it is wrong (measured 18.6 dB against 22.9 in tiles of 8)
    clean, noisy, _ = nuclei_2d
    model = _train(noisy, tiny, steps=100, patch_size=8, batch_size=16, seed=0)
    auto = model.denoise(noisy, device="cpu")
    np.testing.assert_array_equal(auto, model.denoise(noisy, device="cpu", tile=8))
    whole = model.denoise(noisy, device="cpu", tile=128)
    assert psnr(clean, auto, 1.0) > psnr(clean, whole, 1.0) + 2.0
    assert psnr(clean, auto, 1.0) > psnr(clean, noisy, 1.0) + 4.0


def test_intensities_far_from_the_training_data_are_flagged(nuclei_2d, tiny):
    _, noisy, _ = nuclei_2d
    model = _train(noisy, tiny, steps=1)  # trained on 0..1
    assert model.intensity_note(noisy) is None
    assert model.intensity_note(noisy * 2.5 + 0.3) is None  # brighter, but comparable
    ct = (noisy * 3000 - 1000).astype(np.int16)  # CT numbers
    note = model.intensity_note(ct)
    assert note is not None and "far from those" in note and "train on images like" in note
    assert "far from" in model.intensity_note(noisy * 0.01)  # a 100x narrower range
    assert "far from" in model.intensity_note(noisy + 5.0)  # wholly above it
    big = np.tile(noisy, (12, 12))  # sampled, not read whole: still right
    assert model.intensity_note(big) is None
    # channels are checked one by one, and never subsampled away
    two = np.stack([noisy, noisy * 500], axis=-1)
    model2 = _train(np.stack([noisy, noisy], axis=-1), tiny, steps=1, axes="YXC")
    assert "channel 1" in model2.intensity_note(two, "YXC")


def test_a_channel_axis_taken_for_x_gets_a_hint(tiny):
    with pytest.raises(InvalidInputError, match=r"holds channels, say so in the axes \(YXC\)"):
        _train(np.zeros((96, 96, 2), np.float32) + np.arange(2), tiny, steps=1, axes="ZYX")
