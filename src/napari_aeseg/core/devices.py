"""The one place that decides which device computations run on."""

from __future__ import annotations

import importlib
import os
from typing import Literal

import torch

from .errors import InvalidInputError

DeviceName = Literal["auto", "cuda", "mps", "cpu"]
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cuda", "mps", "cpu")

_threads_configured = False


def _threads_at_import() -> int:
    """torch's thread count when napari_aeseg was imported (if torch was loaded by then),
    else now: a different count later was set by the user."""
    at_package = getattr(importlib.import_module("napari_aeseg"), "_TORCH_THREADS_AT_IMPORT", None)
    return torch.get_num_threads() if at_package is None else at_package


_THREADS_AT_IMPORT = _threads_at_import()


def _configure_cpu_threads() -> None:
    """Use every core the process may run on (torch defaults to physical cores only).

    A thread count the user chose wins: ``OMP_NUM_THREADS`` or ``AESEG_NUM_THREADS`` in the
    environment, or a ``torch.set_num_threads`` call that changed the count after both torch
    and napari_aeseg were imported (a call before cannot be told from torch's default).
    """
    global _threads_configured
    if _threads_configured:
        return
    _threads_configured = True
    if torch.get_num_threads() != _THREADS_AT_IMPORT:
        return
    chosen = os.environ.get("AESEG_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if chosen:
        try:
            torch.set_num_threads(max(1, int(chosen)))
        except ValueError:
            pass
        return
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    torch.set_num_threads(max(1, n))


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn a device name into a :class:`torch.device`.

    ``auto`` picks CUDA, then Apple MPS, then the CPU. Asking for a device that is not present
    raises :class:`InvalidInputError` with the devices that are.
    """
    if isinstance(name, torch.device):
        return name
    key = str(name).strip().lower()
    if key.startswith("cuda:") or key == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"device '{name}' was asked for but no CUDA GPU is available here; "
                f"use one of: {', '.join(available_devices())}"
            )
        return torch.device(key)
    if key == "mps":
        if not mps_available():
            raise InvalidInputError(
                "device 'mps' was asked for but Apple MPS is not available here; "
                f"use one of: {', '.join(available_devices())}"
            )
        return torch.device("mps")
    if key == "cpu":
        _configure_cpu_threads()
        return torch.device("cpu")
    if key == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        _configure_cpu_threads()
        return torch.device("cpu")
    raise InvalidInputError(f"unknown device '{name}'; choose one of: {', '.join(DEVICE_CHOICES)}")


def available_devices() -> list[str]:
    """Names of the devices usable here, ``cpu`` always last."""
    names = []
    if torch.cuda.is_available():
        names.append("cuda")
    if mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def describe_device(device: torch.device) -> str:
    """A short human description, e.g. ``cuda (NVIDIA H200)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu ({n} thread{'s' if n != 1 else ''})"
    return device.type
