"""Model files: one safetensors file holding the weights and, in its header, the config as JSON.

Nothing is ever unpickled: safetensors stores raw tensors and a JSON header, so loading a
crafted file cannot run code. The header holds a SHA-256 digest of the tensors, so a file
damaged on disk or in transfer is refused rather than loaded with wrong weights (files
written before the digest existed load without the check). Saves are atomic: the bytes go to a temporary file in the
target folder, which then replaces the target in one rename, so an existing model is never
left half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save

from .config import FORMAT_VERSION
from .errors import ModelFileError, OutputError

FORMAT_NAME = "napari-aeseg"
MODEL_SUFFIX = ".aeseg"


@dataclass
class ModelFile:
    """The raw content of a model file."""

    kind: str
    config_json: str
    weights: dict[str, torch.Tensor]
    optimizer: dict | None = None
    extra: dict = field(default_factory=dict)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"cannot write '{path}': it is a folder; give a file name")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write '{path}': '{folder}' is a file, not a folder")
    if not folder.is_dir():
        raise OutputError(f"cannot write '{path}': folder '{folder}' does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write in '{folder}': {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        os.chmod(tmp, _existing_mode(path))
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write '{path}': {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _existing_mode(path: Path) -> int:
    """The mode of the file being replaced, else 0666 minus the process umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    meta_state: dict[str, dict] = {}
    for idx, entries in state["state"].items():
        meta_state[str(idx)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{idx}/{key}"] = value.detach().cpu().contiguous()
                meta_state[str(idx)][key] = "__tensor__"
            else:
                meta_state[str(idx)][key] = value
    return tensors, {"state": meta_state, "param_groups": state["param_groups"]}


def _unflatten_optimizer(meta: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state = {}
    for idx, entries in meta["state"].items():
        state[int(idx)] = {
            key: tensors[f"optimizer/{idx}/{key}"] if value == "__tensor__" else value
            for key, value in entries.items()
        }
    return {"state": state, "param_groups": meta["param_groups"]}


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_model_file(path: str | os.PathLike, model: ModelFile) -> Path:
    """Save weights, config and (optionally) optimiser state to one safetensors file."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.weights.items()}
    meta_optim = None
    if model.optimizer is not None:
        opt_tensors, meta_optim = _flatten_optimizer(model.optimizer)
        tensors.update(opt_tensors)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "kind": model.kind,
        "config": model.config_json,
        "optimizer": json.dumps(meta_optim),
        "extra": json.dumps(model.extra),
        "sha256": tensors_digest(tensors),
    }
    return atomic_write_bytes(path, safetensors_save(tensors, metadata=metadata))


def read_model_file(path: str | os.PathLike) -> ModelFile:
    """Read a model file, refusing anything that is not a complete napari-aeseg model."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"'{path}' is a folder, not a model file")
    if not path.is_file():
        raise ModelFileError(f"model file '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            if metadata.get("format") != FORMAT_NAME:
                raise ModelFileError(
                    f"'{path}' is a safetensors file but not a napari-aeseg model "
                    "(train one with 'aeseg train-denoiser')"
                )
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        optimizer_meta = json.loads(metadata.get("optimizer", "null"))
        extra = json.loads(metadata.get("extra", "{}"))
        kind = metadata["kind"]
        config_json = metadata["config"]
        if not isinstance(extra, dict):
            raise ValueError("its training record is damaged")
        digest = metadata.get("sha256")
        if digest is not None and digest != tensors_digest(tensors):
            raise ModelFileError(
                f"'{path}' is damaged: its weights do not match the checksum saved with them "
                "(a broken copy or download?); use another copy of the model"
            )
    except ModelFileError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelFileError(
            f"'{path}' is not a readable napari-aeseg model file (corrupt, truncated or from "
            f"another program): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    weights = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    optimizer = None
    if optimizer_meta is not None:
        try:
            optimizer = _unflatten_optimizer(optimizer_meta, tensors)
        except (KeyError, TypeError, AttributeError):
            raise ModelFileError(f"'{path}': the saved optimiser state is damaged") from None
    return ModelFile(kind, config_json, weights, optimizer, extra)
