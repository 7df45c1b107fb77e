import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_aeseg.api import load_model
from napari_aeseg.core.denoiser import DenoiserModel
from napari_aeseg.core.errors import ModelFileError, OutputError
from napari_aeseg.core.training import train_denoiser


@pytest.fixture(scope="module")
def model(nuclei_2d):
    _, noisy, _ = nuclei_2d
    return train_denoiser(
        noisy,
        mode="n2v2",
        steps=4,
        depth=2,
        base_channels=8,
        patch_size=32,
        batch_size=2,
        device="cpu",
    )


def test_round_trip_same_output(model, nuclei_2d, tmp_path):
    _, noisy, _ = nuclei_2d
    path = model.save(tmp_path / "m.aeseg")
    again = load_model(path)
    assert isinstance(again, DenoiserModel)
    assert again.config == model.config
    assert again.trained_steps == 4 and len(again.history) == 4
    assert np.array_equal(again.denoise(noisy, device="cpu"), model.denoise(noisy, device="cpu"))
    assert again.optimizer_state is not None and again.last_weights is not None


def test_truncated_file(model, tmp_path):
    data = model.save(tmp_path / "m.aeseg").read_bytes()
    bad = tmp_path / "cut.aeseg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt, truncated"):
        load_model(bad)


def test_missing_and_random_bytes(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.aeseg")
    junk = tmp_path / "junk.aeseg"
    junk.write_bytes(os.urandom(1000))
    with pytest.raises(ModelFileError):
        load_model(junk)


def test_other_programs_safetensors(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ModelFileError, match="not a napari-aeseg model"):
        load_model(path)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('AESEG_TEST_MARKER', '/tmp/aeseg_pwned')}",))


def test_pickle_payload_is_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("AESEG_TEST_MARKER", str(marker))
    path = tmp_path / "evil.aeseg"
    path.write_bytes(pickle.dumps(_Evil()))
    torch.save({"x": _Evil()}, tmp_path / "evil2.aeseg")
    for p in (path, tmp_path / "evil2.aeseg"):
        with pytest.raises(ModelFileError):
            load_model(p)
    assert not marker.exists()


def test_failed_save_keeps_existing_file(model, tmp_path, monkeypatch):
    path = model.save(tmp_path / "m.aeseg")
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OutputError, match="No space left"):
        model.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.aeseg"]  # no temporary left behind


def test_save_into_missing_folder(model, tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        model.save(tmp_path / "no" / "m.aeseg")


def test_saved_file_mode_follows_umask(model, tmp_path):
    old = os.umask(0o022)
    try:
        path = model.save(tmp_path / "m.aeseg")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def _rewrite(path, out, *, metadata=None, tensors=None):
    """A copy of a model file with header fields (None: removed) or tensors replaced; the
    checksum is recomputed for replaced tensors, as a run that saved them would have."""
    from safetensors import safe_open
    from safetensors.torch import save

    from napari_aeseg.core.model_io import tensors_digest

    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        data = {k: fh.get_tensor(k) for k in fh.keys()}
    if tensors:
        data.update(tensors)
        meta["sha256"] = tensors_digest(data)
    meta.update(metadata or {})
    meta = {k: v for k, v in meta.items() if v is not None}
    out.write_bytes(save(data, metadata=meta))
    return out


def test_damaged_files_are_refused_with_a_reason(model, nuclei_2d, tmp_path):
    """A damaged header or damaged weights give one clear error, never a traceback or a model
    that quietly computes garbage."""
    import json

    path = model.save(tmp_path / "m.aeseg")
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # a bit flip in the last tensor's bytes
    (tmp_path / "flip.aeseg").write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum"):
        DenoiserModel.load(tmp_path / "flip.aeseg")
    # a run that diverged and was saved as it was
    name, weight = next((k, v) for k, v in model.network.state_dict().items() if v.dim() > 1)
    nan = _rewrite(
        path, tmp_path / "nan.aeseg", tensors={f"model/{name}": torch.full_like(weight, np.nan)}
    )
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        DenoiserModel.load(nan)
    config = json.loads(model.config.model_dump_json())
    config["architecture"]["depth"] = "deep"
    cases = {
        "training record": {"extra": '{"history": 5}'},
        "not a JSON object": {"config": "[1, 2]"},
        "not valid JSON": {"config": "{"},
        "damaged: architecture.depth": {"config": json.dumps(config)},
    }
    for i, (message, header) in enumerate(cases.items()):
        with pytest.raises(ModelFileError, match=message):
            DenoiserModel.load(_rewrite(path, tmp_path / f"{i}.aeseg", metadata=header))
    # files written before the checksum existed load as before
    old = DenoiserModel.load(_rewrite(path, tmp_path / "old.aeseg", metadata={"sha256": None}))
    _, noisy, _ = nuclei_2d
    assert np.array_equal(old.denoise(noisy, device="cpu"), model.denoise(noisy, device="cpu"))
