"""Reading and writing images and label images, with clear errors and atomic writes."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ImageReadError, OutputError
from .model_io import atomic_write_bytes

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".npy")


@dataclass(frozen=True)
class ImageFile:
    """An image read from disk: data and, when the file says so, its axes."""

    data: np.ndarray
    axes: str | None
    path: Path


def read_image(path: str | os.PathLike) -> ImageFile:
    """Read a TIFF, PNG, JPEG, BMP or ``.npy`` file (never unpickles)."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"file '{path}' does not exist")
    if path.is_dir():
        if (
            (path / ".zarray").exists()
            or (path / "zarr.json").exists()
            or (path / ".zgroup").exists()
        ):
            return _read_zarr(path)
        raise ImageReadError(f"'{path}' is a folder, not an image file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                data = series.asarray()
                axes = _tiff_axes(series.axes, data.ndim)
            return ImageFile(data, axes, path)
        if suffix == ".npy":
            try:
                return ImageFile(np.load(path, allow_pickle=False), None, path)
            except ValueError as exc:
                if "pickle" not in str(exc):
                    raise
                raise ImageReadError(
                    f"'{path}' is not a plain numeric .npy array (object arrays and other "
                    "pickled data are never loaded)"
                ) from None
        if suffix in (".png", ".jpg", ".jpeg", ".bmp"):
            import imageio.v3 as iio

            data = np.asarray(iio.imread(path))
            axes = "YXC" if data.ndim == 3 else None
            return ImageFile(data, axes, path)
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(
            f"'{path}' could not be read as an image: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    except Exception as exc:  # third-party readers raise their own error types
        if type(exc).__module__.split(".")[0] in ("tifffile", "imageio", "PIL"):
            raise ImageReadError(
                f"'{path}' could not be read as an image (not a valid {suffix} file?)"
            ) from None
        raise
    raise ImageReadError(
        f"'{path}' has an unsupported file type '{suffix}'; use one of "
        f"{', '.join(IMAGE_SUFFIXES)} or an OME-Zarr/zarr folder"
    )


def _read_zarr(path: Path) -> ImageFile:
    try:
        import zarr
    except ImportError:
        raise ImageReadError(
            f"'{path}' is a zarr folder; install zarr to read it (pip install zarr)"
        ) from None
    try:
        node = zarr.open(str(path), mode="r")
        if hasattr(node, "shape"):
            return ImageFile(np.asarray(node), None, path)
        arr = node["0"] if "0" in node else None
        if arr is None:
            raise ImageReadError(f"'{path}' holds no array named '0'")
        axes = None
        ms = node.attrs.get("multiscales")
        if ms:
            names = [a["name"] if isinstance(a, dict) else a for a in ms[0].get("axes", [])]
            axes = "".join(n.upper() for n in names) or None
        return ImageFile(np.asarray(arr), axes, path)
    except ImageReadError:
        raise
    except Exception as exc:  # zarr and its codecs raise many kinds of errors
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(f"'{path}' could not be read as a zarr array: {detail}") from None


def _tiff_axes(axes: str, ndim: int) -> str | None:
    """Translate tifffile's axes (``QQYX``, ``ZYXS``...) where it is unambiguous."""
    mapped = axes.upper().replace("S", "C").replace("I", "Z").replace("Q", "?")
    if "?" in mapped or len(mapped) != ndim or len(set(mapped)) != len(mapped):
        return None
    if set(mapped) - set("TCZYX"):
        return None
    return mapped


def write_tiff(path: str | os.PathLike, data: np.ndarray, *, axes: str | None = None) -> Path:
    """Write a (compressed) TIFF atomically, keeping the array's dtype."""
    import tifffile

    path = Path(path)
    buf = io.BytesIO()
    kwargs: dict = {"photometric": "minisblack"}
    if (
        axes is not None
        and axes.endswith("C")
        and data.shape[-1] in (3, 4)
        and data.dtype == np.uint8
    ):
        kwargs["photometric"] = "rgb"
    if axes is not None and set(axes) <= set("TZCYXS"):
        kwargs["metadata"] = {"axes": axes}
    try:
        tifffile.imwrite(buf, data, compression="zlib", **kwargs)
    except (ValueError, TypeError) as exc:
        raise OutputError(f"cannot write '{path}' as TIFF: {exc}") from None
    return atomic_write_bytes(path, buf.getvalue())


def write_png(path: str | os.PathLike, rgb_or_gray: np.ndarray) -> Path:
    """Write an 8-bit PNG atomically."""
    import imageio.v3 as iio

    data = iio.imwrite("<bytes>", np.asarray(rgb_or_gray), extension=".png")
    return atomic_write_bytes(path, data)


def ensure_output_dir(path: str | os.PathLike) -> Path:
    """Create an output folder (and parents) or explain why it cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"output '{path}' exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder '{path}': {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise OutputError(f"output folder '{path}' is not writable")
    return path
