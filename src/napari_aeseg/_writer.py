"""Writers for Labels layers: lossless TIFF and OME-Zarr, keeping the labels' dtype."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .core.errors import OutputError
from .core.image_io import write_tiff

_AXES = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TCZYX"}


def _level0(data: Any, meta: dict) -> Any:
    return data[0] if meta.get("multiscale") else data


_AXIS_NAMES = {"t": "T", "time": "T", "z": "Z", "y": "Y", "x": "X"}


def _layer_axes(meta: dict, ndim: int) -> str | None:
    """The labels' axes: from the layer's axis labels when they name them (a movie's
    ``t, y, x``), else guessed by the number of dimensions."""
    named = [_AXIS_NAMES.get(str(a).strip().lower()) for a in meta.get("axis_labels") or ()]
    if len(named) == ndim and None not in named:
        axes = "".join(named)
        if axes == "".join(a for a in "TZYX" if a in axes) and axes.endswith("YX"):
            return axes
    return _AXES.get(ndim)


def _layer_spacing(meta: dict, axes: str | None) -> dict[str, float] | None:
    """The layer's scale along its Z, Y, X axes as a voxel size, when it is not 1 everywhere
    (a plain layer's file stays without one, as before)."""
    scale = meta.get("scale")
    if axes is None or scale is None or len(scale) != len(axes):
        return None
    spacing = {a: abs(float(v)) for a, v in zip(axes, scale, strict=True) if a in "ZYX"}
    if not spacing or all(v == 1.0 for v in spacing.values()):
        return None
    if not all(np.isfinite(v) and v > 0 for v in spacing.values()):
        return None
    return spacing


def _class_names(meta: dict) -> list[str] | None:
    """The names the Segment widget gave a layer's classes 1..K (its features), or None."""
    features = meta.get("features")
    if set(getattr(features, "columns", ())) != {"index", "class"}:  # the widget's table only
        return None
    try:
        index = [int(i) for i in features["index"]]
        names = [str(n) for n in features["class"]]
    except (TypeError, KeyError, ValueError):
        return None
    if not names or index != list(range(1, len(names) + 1)):
        return None
    return names


def write_labels_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """Write a labels layer to a zlib-compressed TIFF (lossless, same dtype), with the
    layer's scale as the voxel size the readers of this plugin and the CLI pick up. Named
    classes go into ``<stem>_classes.csv`` beside it (``label,name``), as ``aeseg segment``
    writes them."""
    labels = np.asarray(_level0(data, meta))
    axes = _layer_axes(meta, labels.ndim)
    axes = axes if axes and labels.ndim <= 4 else None
    spatial = [
        str(u) for a, u in zip(axes or "", meta.get("units") or (), strict=False) if a in "ZYX"
    ]
    unit = spatial[0] if len(set(spatial)) == 1 else None  # ("pixel": none written)
    out = write_tiff(path, labels, axes=axes, spacing=_layer_spacing(meta, axes), unit=unit)
    names = _class_names(meta)
    table = out.with_name(f"{out.stem.removesuffix('_labels')}_classes.csv")
    ours = table.is_file() and _is_class_table(table)
    if names is None:
        if ours:  # a table of an earlier layer saved here would name the wrong classes
            table.unlink()
        return [str(out)]
    if table.exists() and not ours:
        warnings.warn(
            f"class names not written: '{table}' exists and is not a class table",
            stacklevel=2,
        )
        return [str(out)]
    from .core.model_io import atomic_write_bytes
    from .core.segmenter import csv_field

    rows = "".join(f"{i},{csv_field(n)}\n" for i, n in enumerate(names, 1))
    atomic_write_bytes(table, f"label,name\n{rows}".encode())
    return [str(out), str(table)]


def _is_class_table(path: Path) -> bool:
    """Whether ``path`` is a ``label,name`` table as this plugin writes them."""
    try:
        with path.open(encoding="utf-8") as fh:
            return fh.readline().strip() == "label,name"
    except (OSError, UnicodeDecodeError):
        return False


def _axes_metadata(ndim: int, units=None, names: str | None = None) -> list[dict]:
    names = names or _AXES.get(ndim, "".join("?" * (ndim - 2)) + "YX")
    units = list(units) if units is not None and len(units) == ndim else [None] * ndim
    axes = []
    for i, name in enumerate(names):
        if name in "ZYX":
            axis = {"name": name.lower(), "type": "space"}
            unit = str(units[i]) if units[i] is not None else ""
            if unit and unit not in ("pixel", "pixels", "dimensionless"):
                axis["unit"] = unit  # napari's length units are UDUNITS names (micrometer)
            axes.append(axis)
        elif name == "T":
            axes.append({"name": "t", "type": "time"})
        elif name == "C":
            axes.append({"name": "c", "type": "channel"})
        else:
            axes.append({"name": f"dim_{i}"})
    return axes


def write_labels_zarr(path: str, data: Any, meta: dict) -> list[str]:
    """Write a labels layer as an OME-Zarr (NGFF 0.4) image: chunked, compressed, lossless.

    Lazy (dask) data is written chunk by chunk, so labels larger than memory work. The
    folder is written next to the target and moved into place when complete.
    """
    try:
        import zarr
    except ImportError:
        raise OutputError("writing .zarr needs the zarr package: pip install zarr") from None
    target = Path(path)
    levels = list(data) if meta.get("multiscale") else [data]
    ndim = levels[0].ndim
    scale = [float(s) for s in meta.get("scale", [1.0] * ndim)]
    translate = [float(t) for t in meta.get("translate", [0.0] * ndim)]
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write '{target}': folder '{parent}' does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        datasets = []
        for i, level in enumerate(levels):
            chunks = tuple(min(n, c) for n, c in zip(level.shape, _chunks(ndim), strict=True))
            arr = group.create_array(
                str(i), shape=level.shape, dtype=level.dtype, chunks=chunks, fill_value=0
            )
            _copy_into(arr, level, chunks)
            factor = [a / b for a, b in zip(levels[0].shape, level.shape, strict=True)]
            datasets.append(
                {
                    "path": str(i),
                    "coordinateTransformations": [
                        {
                            "type": "scale",
                            "scale": [s * f for s, f in zip(scale, factor, strict=True)],
                        },
                        {"type": "translation", "translation": translate},
                    ],
                }
            )
        group.attrs["multiscales"] = [
            {
                "version": "0.4",
                "name": str(meta.get("name", "labels")),
                "axes": _axes_metadata(ndim, meta.get("units"), _layer_axes(meta, ndim)),
                "datasets": datasets,
            }
        ]
        image_label: dict = {"version": "0.4", "source": {}}
        names = _class_names(meta)
        if names:  # NGFF's per-value properties: the class of each label value
            image_label["properties"] = [
                {"label-value": i, "class": n} for i, n in enumerate(names, 1)
            ]
        group.attrs["image-label"] = image_label
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write '{target}': {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [str(target)]


def _chunks(ndim: int) -> tuple[int, ...]:
    return (1,) * max(0, ndim - 3) + ((64, 256, 256) if ndim >= 3 else (1024, 1024))[
        -min(ndim, 3) :
    ]


def _copy_into(arr, level, chunks) -> None:
    """Copy one slab of chunks at a time along the first axis (bounded memory for dask)."""
    step = chunks[0]
    for start in range(0, level.shape[0], step):
        arr[start : start + step] = np.asarray(level[start : start + step])
