import pytest

from napari_aeseg.core.config import DenoiserConfig, NoiseSpec, parse_config_json
from napari_aeseg.core.errors import InvalidInputError
from napari_aeseg.core.training import make_denoiser_config


def test_defaults_follow_mode():
    n2v2 = make_denoiser_config((64, 64), mode="n2v2")
    assert n2v2.architecture.blur_pool and not n2v2.architecture.top_skip
    n2v = make_denoiser_config((64, 64), mode="n2v")
    assert not n2v.architecture.blur_pool and n2v.architecture.top_skip
    dae = make_denoiser_config((64, 64), mode="dae")
    assert [str(n) for n in dae.noise] == ["gaussian:0.1"]


def test_axes_guessed_and_channels_read():
    cfg = make_denoiser_config((3, 40, 64, 64), axes="czyx")
    assert cfg.axes == "CZYX"
    assert cfg.architecture.in_channels == 3
    assert cfg.architecture.spatial_dims == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(patch_size=50), "not divisible by 4"),
        (dict(mode="n2v", noise="gaussian:0.1"), "only used with mode 'dae'"),
        (dict(steps=0), "steps"),
        (dict(mode="n2v2", depth=1), "depth >= 2"),
        (dict(axes="YY"), "twice"),
        (dict(axes="QX"), "contain Q"),
        (dict(mode="dae", noise="speckle:2"), "unknown noise"),
        (dict(mode="dae", noise="gaussian:abc"), "not a number"),
        (dict(mode="dae", noise="gaussian:3"), "level must be in"),
    ],
)
def test_bad_options_raise_one_line(kwargs, message):
    with pytest.raises(InvalidInputError, match=message) as info:
        shape = (64, 64) if "axes" not in kwargs else (64, 64)
        make_denoiser_config(shape, **kwargs)
    assert "\n" not in str(info.value)


def test_json_round_trip_and_unknown_keys_refused():
    cfg = make_denoiser_config((64, 64), mode="dae", noise=["poisson:20", "gaussian:0.05"])
    again = parse_config_json(DenoiserConfig, cfg.model_dump_json())
    assert again == cfg
    data = cfg.model_dump()
    data["training"]["stepz"] = 3
    with pytest.raises(ValueError, match="stepz"):
        DenoiserConfig.model_validate(data)


def test_newer_format_is_refused_with_advice():
    cfg = make_denoiser_config((64, 64))
    text = cfg.model_dump_json().replace('"format_version":1', '"format_version":99')
    with pytest.raises(ValueError, match="upgrade napari-aeseg"):
        parse_config_json(DenoiserConfig, text)


def test_noise_spec_parse():
    assert NoiseSpec.parse("Poisson:12").level == 12
    assert NoiseSpec.parse("salt-pepper").kind == "salt_pepper"


def test_a_thread_count_the_user_set_is_kept(monkeypatch):
    """torch.set_num_threads after importing napari_aeseg wins over using every core."""
    import torch

    from napari_aeseg.core import devices

    before = torch.get_num_threads()
    monkeypatch.delenv("AESEG_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        monkeypatch.setattr(devices, "_threads_configured", False)
        monkeypatch.setattr(devices, "_THREADS_AT_IMPORT", before + 3)
        devices.resolve_device("cpu")
        assert torch.get_num_threads() == before
        monkeypatch.setattr(devices, "_threads_configured", False)
        monkeypatch.setattr(devices, "_THREADS_AT_IMPORT", before)
        monkeypatch.setenv("AESEG_NUM_THREADS", str(before + 1))
        devices.resolve_device("cpu")
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)


def test_default_batch_follows_the_dimensionality():
    from napari_aeseg.core.training import make_denoiser_config

    assert make_denoiser_config((16, 64, 64), axes="ZYX").training.batch_size == 4
    assert make_denoiser_config((64, 64), axes="YX").training.batch_size == 16
    assert make_denoiser_config((16, 64, 64), axes="ZYX", batch_size=8).training.batch_size == 8


def test_a_thread_count_set_after_importing_the_package_is_kept():
    """The usual script: import torch and napari_aeseg, set the threads, then work."""
    import os
    import subprocess
    import sys

    code = (
        "import torch, napari_aeseg; torch.set_num_threads(1); "
        "from napari_aeseg.core.devices import resolve_device; resolve_device('cpu'); "
        "print(torch.get_num_threads())"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "1", out.stderr
