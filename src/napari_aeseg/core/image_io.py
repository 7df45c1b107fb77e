"""Reading and writing images and label images, with clear errors and atomic writes."""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ImageReadError, OutputError
from .model_io import atomic_write_bytes

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".npy")


@dataclass(frozen=True)
class ImageFile:
    """An image read from disk: data and, when the file says so, its axes and voxel size.

    ``spacing`` maps the spatial axes the file calibrates ('Z', 'Y', 'X') to their physical
    size in the file's unit (micrometres when the file mixes units), or is ``None``.
    """

    data: np.ndarray
    axes: str | None
    path: Path
    spacing: dict[str, float] | None = None


#: ImageJ metadata key with the axes of a stack of 2D slices (S), written as a Z stack
SLICES_KEY = "aeseg_axes"


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
                slices = (tif.imagej_metadata or {}).get(SLICES_KEY) if tif.is_imagej else None
                if axes and isinstance(slices, str) and slices.replace("S", "Z") == axes:
                    axes = slices  # written by write_tiff: a stack of 2D slices
                spacing = _quietly(_tiff_spacing, tif, axes)
            return ImageFile(data, axes, path, spacing)
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
        # OME-Zarr 0.4 keeps its metadata at the top of the attributes, 0.5 under "ome"
        ome = node.attrs.get("ome")
        ms = node.attrs.get("multiscales") or (
            ome.get("multiscales") if isinstance(ome, dict) else None
        )
        try:
            name = str(ms[0]["datasets"][0]["path"])
        except (TypeError, KeyError, IndexError):
            name = "0"
        name = name if name in node else "0"
        arr = node[name] if name in node else None
        if arr is None:
            raise ImageReadError(f"'{path}' holds no array named '0'")
        axes = spacing = None
        if ms:
            names = [a["name"] if isinstance(a, dict) else a for a in ms[0].get("axes", [])]
            axes = "".join(n.upper() for n in names) or None
            spacing = _quietly(_zarr_spacing, ms[0])
        return ImageFile(np.asarray(arr), axes, path, spacing)
    except ImageReadError:
        raise
    except Exception as exc:  # zarr and its codecs raise many kinds of errors
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(f"'{path}' could not be read as a zarr array: {detail}") from None


_UM_PER_UNIT = {
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "µm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
}


def _quietly(parse, *args) -> dict[str, float] | None:
    """Run a spacing parser: odd metadata means no spacing, never an error."""
    try:
        return parse(*args)
    except Exception:
        return None


def _unit_key(unit: object) -> object:
    """A comparable key for a length unit: micrometres per unit when known."""
    if not isinstance(unit, str) or not unit.strip():
        return None
    name = unit.strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").replace("\u03bc", "µ")
    return _UM_PER_UNIT.get(name.lower(), name.lower())


class Spacing(dict):
    """A voxel size by axis letter, with the length ``unit`` its file names (``None`` when it
    names none): compares and reads as the plain dict."""

    unit: str | None = None


def _unit_name(unit: object) -> str | None:
    if not isinstance(unit, str) or not unit.strip():
        return None
    key = _unit_key(unit)
    if key in ("pixel", "pixels"):
        return None
    return "micron" if key == 1.0 else unit.strip()


def _clean_spacing(
    sizes: dict[str, object], units: dict[str, object] | None = None, axes: str | None = None
) -> Spacing | None:
    """Keep finite positive sizes of the spatial axes; mixed units become micrometres."""
    out: dict[str, float] = {}
    for ax in "ZYX":
        value = sizes.get(ax)
        if value is None or isinstance(value, bool) or (axes is not None and ax not in axes):
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value) and value > 0:
            out[ax] = value
    if not out:
        return None
    keys = {ax: _unit_key((units or {}).get(ax)) for ax in out}
    unit = _unit_name(next(iter((units or {}).get(ax) for ax in out), None))
    if len(set(keys.values())) > 1:
        if not all(isinstance(k, float) for k in keys.values()):
            return None
        out = {ax: value * keys[ax] for ax, value in out.items()}
        unit = "micron"
    spacing = Spacing(out)
    spacing.unit = unit
    return spacing


def _inverse_rational(value: object) -> float | None:
    """Pixel size from a TIFF rational resolution (pixels per unit)."""
    if not isinstance(value, tuple) or len(value) != 2 or not value[0]:
        return None
    return value[1] / value[0]


def _tiff_spacing(tif, axes: str | None) -> dict[str, float] | None:
    """Voxel size from OME-XML, ImageJ or tifffile metadata, else calibrated resolution tags."""
    page = tif.pages[0]
    if tif.is_ome:
        return _ome_spacing(tif.ome_metadata, axes)
    resolution = {"Y": _inverse_rational(page.tags.valueof(283))}
    resolution["X"] = _inverse_rational(page.tags.valueof(282))
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        unit = meta.get("unit")
        z_step = meta.get("spacing")
        if z_step is None and isinstance(_unit_key(meta.get("zunit", unit)), float):
            z_step = 1.0  # ImageJ leaves out a Z step of exactly 1 (its default)
        sizes = {**resolution, "Z": z_step}
        units = {"X": unit, "Y": meta.get("yunit", unit), "Z": meta.get("zunit", unit)}
        spacing = _clean_spacing(sizes, units, axes)
        uncalibrated = _unit_key(unit) in (None, "pixel", "pixels")
        if spacing and uncalibrated and "Z" not in spacing and set(spacing.values()) == {1.0}:
            return None
        return spacing
    meta = (tif.shaped_metadata or ({},))[0]
    if isinstance(meta, dict) and "spacing" in meta:
        stored = meta["spacing"]
        if not isinstance(stored, dict):
            return None
        return _clean_spacing({str(k).upper(): v for k, v in stored.items()}, None, axes)
    if page.tags.valueof(296) in (None, 1):
        return None
    return _clean_spacing(resolution, None, axes)


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ome_spacing(xml: str | None, axes: str | None = None) -> dict[str, float] | None:
    """PhysicalSizeX/Y/Z of the first OME Image's Pixels (default unit µm)."""
    import xml.etree.ElementTree as ET

    if not xml:
        return None
    root = ET.fromstring(xml)
    image = next((el for el in root.iter() if _local_name(el.tag) == "Image"), None)
    if image is None:
        return None
    pixels = next((el for el in image if _local_name(el.tag) == "Pixels"), None)
    if pixels is None:
        return None
    sizes = {ax: pixels.get(f"PhysicalSize{ax}") for ax in "ZYX"}
    units = {ax: pixels.get(f"PhysicalSize{ax}Unit", "µm") for ax in "ZYX"}
    return _clean_spacing(sizes, units, axes)


def _zarr_scale(transforms: object, ndim: int) -> list[float] | None:
    """The 'scale' of an OME-Zarr coordinateTransformations list, if it fits ``ndim`` axes."""
    if not isinstance(transforms, list):
        return None
    for t in transforms:
        if isinstance(t, dict) and t.get("type") == "scale":
            scale = t.get("scale")
            if isinstance(scale, list) and len(scale) == ndim:
                return [
                    float(v)
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                    else math.nan
                    for v in scale
                ]
    return None


def _zarr_spacing(ms: dict) -> dict[str, float] | None:
    """Voxel size of dataset '0' of an OME-Zarr multiscales entry, for its spatial axes."""
    axes = ms.get("axes") or []
    datasets = ms.get("datasets") or []
    dataset = next((d for d in datasets if str(d.get("path")) == "0"), datasets[0])
    scale = _zarr_scale(dataset.get("coordinateTransformations"), len(axes))
    if scale is None:
        return None
    outer = _zarr_scale(ms.get("coordinateTransformations"), len(axes))
    if outer is not None:
        scale = [a * b for a, b in zip(scale, outer, strict=True)]
    sizes: dict[str, object] = {}
    units: dict[str, object] = {}
    for axis, value in zip(axes, scale, strict=True):
        info = axis if isinstance(axis, dict) else {"name": axis}
        name = str(info.get("name", "")).upper()
        spatial = info["type"] == "space" if "type" in info else name in ("Z", "Y", "X")
        if not spatial or name not in ("Z", "Y", "X"):
            continue
        if name in sizes:
            return None
        sizes[name], units[name] = value, info.get("unit")
    return _clean_spacing(sizes, units)


def _tiff_axes(axes: str, ndim: int) -> str | None:
    """Translate tifffile's axes (``QQYX``, ``ZYXS``...) where it is unambiguous."""
    # I (a plain sequence of pages) says nothing: Z, T or samples; the caller decides
    mapped = axes.upper().replace("S", "C").replace("I", "?").replace("Q", "?")
    if "?" in mapped or len(mapped) != ndim or len(set(mapped)) != len(mapped):
        return None
    if set(mapped) - set("TCZYX"):
        return None
    return mapped


def in_integer_type(image: np.ndarray, dtype) -> np.ndarray:
    """``image`` rounded and clipped into the integer ``dtype`` (other dtypes: unchanged).
    Denoised RGB(A) goes back to its input's type, so that it shows and saves as colour."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "ui":
        return image
    info = np.iinfo(dtype)
    return np.clip(np.rint(image), info.min, info.max).astype(dtype)


def write_tiff(
    path: str | os.PathLike,
    data: np.ndarray,
    *,
    axes: str | None = None,
    spacing: dict[str, float] | None = None,
    unit: str | None = None,
    channel_names: list[str] | None = None,
) -> Path:
    """Write a (compressed) TIFF atomically, keeping the array's dtype and voxel ``spacing``
    (in ``unit``; by default the unit ``spacing`` carries, if any), and naming the planes
    of its channel axis ``C`` by ``channel_names`` (ImageJ's slice labels, which Fiji shows
    above each plane; in the JSON metadata otherwise).

    Where ImageJ can hold the array (8-bit, 16-bit or float32; axes in its order T, Z, C,
    Y, X; under 4 GB) the file is an ImageJ hyperstack, so that Fiji opens it with its axes
    and calibration; otherwise the axes and voxel size go into tifffile's JSON metadata.
    """
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
    clean = None
    if spacing:
        clean = _clean_spacing({str(k).upper(): v for k, v in spacing.items()})
        if clean is None or len(clean) != len(spacing):
            raise OutputError(
                f"cannot write '{path}' as TIFF: spacing must map 'Z', 'Y', 'X' to positive "
                f"finite sizes, got {spacing!r}"
            )
        unit = unit or getattr(spacing, "unit", None)
    # ImageJ has no axis for a stack of 2D slices (S): it is a Z stack there, with a mark
    # that gives our reader its S back (and no Z step: the slices are not planes in space)
    ij_axes = axes.replace("S", "Z") if axes is not None and "Z" not in axes else axes
    if _imagej_fits(data, ij_axes, kwargs["photometric"]):
        kwargs["imagej"] = True
        if ij_axes != axes:
            kwargs["metadata"].update({"axes": ij_axes, SLICES_KEY: axes})
        if clean:
            if "X" in clean and "Y" in clean:
                kwargs["resolution"] = (1.0 / clean["X"], 1.0 / clean["Y"])
            if "Z" in clean:
                kwargs["metadata"]["spacing"] = clean["Z"]
            if _unit_name(unit):
                kwargs["metadata"]["unit"] = _unit_name(unit)
    elif clean:
        # in the JSON metadata only: the sizes carry no unit, and a resolution tag needs one
        kwargs["metadata"] = {**kwargs.get("metadata", {}), "spacing": dict(clean)}
    if channel_names is not None:
        _name_channels(kwargs, data.shape, axes, list(channel_names))
    try:
        tifffile.imwrite(buf, data, compression="zlib", **kwargs)
    except (ValueError, TypeError) as exc:
        raise OutputError(f"cannot write '{path}' as TIFF: {exc}") from None
    return atomic_write_bytes(path, buf.getvalue())


def _name_channels(kwargs: dict, shape: tuple[int, ...], axes: str | None, names: list) -> None:
    """Put ``names`` of the channel axis into ``write_tiff``'s tifffile arguments."""
    if axes is None or "C" not in axes or shape[axes.index("C")] != len(names):
        raise OutputError(f"{len(names)} channel name(s) for axes {axes} of shape {shape}")
    meta = kwargs.setdefault("metadata", {})
    if not kwargs.get("imagej"):
        meta["channel_names"] = names
        return
    # one label per plane, planes in ImageJ's order (T, Z, then C, the fastest)
    planes = int(np.prod([n for a, n in zip(axes, shape, strict=True) if a in "TZSC"]))
    meta["Labels"] = [names[i % len(names)] for i in range(planes)]


def _imagej_fits(data: np.ndarray, axes: str | None, photometric: str) -> bool:
    """Whether an ImageJ hyperstack holds ``data`` with these axes, as it is."""
    if axes is None or photometric != "minisblack" or len(axes) != data.ndim:
        return False
    if axes != "".join(a for a in "TZCYX" if a in axes) or not axes.endswith("YX"):
        return False
    return data.dtype in (np.uint8, np.uint16, np.float32) and data.nbytes < 2**32 - 2**25


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
