"""Voxel size (spacing) read from and written to image files."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_aeseg.core.errors import OutputError
from napari_aeseg.core.image_io import _ome_spacing, _quietly, read_image, write_tiff

SAMPLE_3D = Path(__file__).resolve().parents[2] / "sample_data" / "real_3d_stack.tif"


@pytest.fixture
def stack():
    return np.arange(3 * 8 * 10, dtype=np.uint16).reshape(3, 8, 10)


def assert_spacing(actual, expected):
    assert actual is not None
    assert list(actual) == list(expected)
    assert actual == pytest.approx(expected, rel=1e-4)


def test_imagej_stack_spacing(tmp_path, stack):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        stack,
        imagej=True,
        resolution=(1 / 0.26, 1 / 0.26),
        metadata={"spacing": 0.9, "unit": "um", "axes": "ZYX"},
    )
    image = read_image(path)
    assert image.axes == "ZYX"
    assert_spacing(image.spacing, {"Z": 0.9, "Y": 0.26, "X": 0.26})


def test_imagej_escaped_micron_unit_and_mixed_z_unit(tmp_path, stack):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        stack,
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"spacing": 500, "unit": "\\u00B5m", "zunit": "nm", "axes": "ZYX"},
    )
    assert_spacing(read_image(path).spacing, {"Z": 0.5, "Y": 0.5, "X": 0.5})


def test_uncalibrated_imagej_has_no_spacing(tmp_path, stack):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})
    assert read_image(path).spacing is None


def test_imagej_2d_ignores_z_spacing(tmp_path):
    path = tmp_path / "ij2d.tif"
    tifffile.imwrite(
        path,
        np.zeros((8, 10), np.uint8),
        imagej=True,
        resolution=(4.0, 4.0),
        metadata={"spacing": 2.0, "unit": "micron"},
    )
    assert_spacing(read_image(path).spacing, {"Y": 0.25, "X": 0.25})


@pytest.mark.parametrize("spacing", ["abc", -1.0, 0, "nan"])
def test_garbage_imagej_spacing_gives_none(tmp_path, stack, spacing):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"spacing": spacing, "axes": "ZYX"})
    image = read_image(path)
    assert image.spacing is None
    np.testing.assert_array_equal(image.data, stack)


def test_garbage_value_dropped_other_axes_kept(tmp_path, stack):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        stack,
        imagej=True,
        resolution=(5.0, 5.0),
        metadata={"spacing": "abc", "unit": "um", "axes": "ZYX"},
    )
    assert_spacing(read_image(path).spacing, {"Y": 0.2, "X": 0.2})


def test_ome_tiff_spacing(tmp_path, stack):
    path = tmp_path / "img.ome.tif"
    tifffile.imwrite(
        path,
        stack,
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, "PhysicalSizeZ": 1.0},
    )
    assert_spacing(read_image(path).spacing, {"Z": 1.0, "Y": 0.2, "X": 0.2})


def test_ome_tiff_mixed_units_become_micrometres(tmp_path, stack):
    path = tmp_path / "img.ome.tif"
    metadata = {
        "axes": "ZYX",
        "PhysicalSizeX": 200.0,
        "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 200.0,
        "PhysicalSizeYUnit": "nm",
        "PhysicalSizeZ": 1.0,
    }
    tifffile.imwrite(path, stack, ome=True, metadata=metadata)
    assert_spacing(read_image(path).spacing, {"Z": 1.0, "Y": 0.2, "X": 0.2})


def test_ome_tiff_same_units_are_kept(tmp_path, stack):
    path = tmp_path / "img.ome.tif"
    metadata = {"axes": "ZYX", "PhysicalSizeX": 200.0, "PhysicalSizeXUnit": "nm"}
    metadata |= {"PhysicalSizeY": 200.0, "PhysicalSizeYUnit": "nm"}
    tifffile.imwrite(path, stack, ome=True, metadata=metadata)
    assert_spacing(read_image(path).spacing, {"Y": 200.0, "X": 200.0})


def test_ome_tiff_without_physical_size(tmp_path, stack):
    path = tmp_path / "img.ome.tif"
    tifffile.imwrite(path, stack, ome=True, metadata={"axes": "ZYX"})
    assert read_image(path).spacing is None


@pytest.mark.parametrize(
    "xml",
    [
        "<not xml",
        "<OME><Image/></OME>",
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image><Pixels '
        'PhysicalSizeX="abc" PhysicalSizeY="-1" PhysicalSizeZ="inf"/></Image></OME>',
        '<OME><Image><Pixels PhysicalSizeX="1" PhysicalSizeXUnit="furlong" '
        'PhysicalSizeY="1"/></Image></OME>',
    ],
)
def test_odd_ome_xml_gives_none(xml):
    assert _quietly(_ome_spacing, xml) is None


@pytest.mark.parametrize(
    "xml",
    [
        '<?xml version="1.0"?><OME><Image><Pixels PhysicalSizeX="1"></OME>',
        '<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        '<Image ID="Image:0"><Pixels PhysicalSizeX="abc" PhysicalSizeZ="-2" '
        'DimensionOrder="XYZCT" ID="Pixels:0" SizeX="10" SizeY="8" SizeZ="3" SizeC="1" '
        'SizeT="1" Type="uint16"><TiffData/></Pixels></Image></OME>',
    ],
)
def test_odd_ome_tiff_reads_without_spacing(tmp_path, stack, xml):
    path = tmp_path / "img.ome.tif"
    tifffile.imwrite(path, stack, description=xml, metadata=None, photometric="minisblack")
    image = read_image(path)
    assert image.spacing is None
    np.testing.assert_array_equal(image.data, stack)


def test_write_tiff_round_trip_with_spacing(tmp_path, stack):
    path = write_tiff(
        tmp_path / "out.tif", stack, axes="ZYX", spacing={"Z": 2.0, "Y": 0.3, "X": 0.3}
    )
    image = read_image(path)
    assert image.axes == "ZYX"
    assert image.spacing == {"Z": 2.0, "Y": 0.3, "X": 0.3}
    np.testing.assert_array_equal(image.data, stack)
    with tifffile.TiffFile(path) as tif:
        # no resolution tag: the sizes carry no unit
        assert tif.pages[0].resolutionunit == tifffile.RESUNIT.NONE


def test_write_tiff_spacing_without_axes(tmp_path, stack):
    path = write_tiff(tmp_path / "out.tif", stack, spacing={"z": 2.0, "y": 0.5, "x": 0.25})
    assert read_image(path).spacing == {"Z": 2.0, "Y": 0.5, "X": 0.25}


def test_write_tiff_without_spacing(tmp_path, stack):
    path = write_tiff(tmp_path / "out.tif", stack, axes="ZYX")
    assert read_image(path).spacing is None
    unchanged = tmp_path / "same.tif"
    write_tiff(unchanged, stack, axes="ZYX", spacing=None)
    assert unchanged.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("spacing", [{"Z": -1.0}, {"X": float("nan")}, {"Q": 1.0}, {"Y": "a"}])
def test_write_tiff_rejects_bad_spacing(tmp_path, stack, spacing):
    with pytest.raises(OutputError, match="spacing"):
        write_tiff(tmp_path / "out.tif", stack, axes="ZYX", spacing=spacing)
    assert not (tmp_path / "out.tif").exists()


def test_garbage_shaped_spacing_gives_none(tmp_path, stack):
    for i, spacing in enumerate(["abc", {"Z": "x", "Y": -2}, [1, 2, 3]]):
        path = tmp_path / f"shaped{i}.tif"
        tifffile.imwrite(
            path, stack, photometric="minisblack", metadata={"axes": "ZYX", "spacing": spacing}
        )
        assert read_image(path).spacing is None


def test_plain_tiff_resolution_tags(tmp_path):
    data = np.zeros((8, 10), np.uint8)
    calibrated = tmp_path / "cal.tif"
    tifffile.imwrite(calibrated, data, resolution=(4.0, 2.0), resolutionunit="MICROMETER")
    assert_spacing(read_image(calibrated).spacing, {"Y": 0.5, "X": 0.25})
    uncalibrated = tmp_path / "raw.tif"
    tifffile.imwrite(uncalibrated, data, resolution=(4.0, 2.0), resolutionunit="NONE")
    assert read_image(uncalibrated).spacing is None


def _write_ome_zarr(path, data, multiscale):
    zarr = pytest.importorskip("zarr")
    kwargs = {"zarr_format": 2} if int(zarr.__version__.split(".")[0]) >= 3 else {}
    root = zarr.open_group(str(path), mode="w", **kwargs)
    root.create_array("0", data=data) if hasattr(root, "create_array") else root.array("0", data)
    root.attrs["multiscales"] = [multiscale]


def _multiscale(scale, axes=None, outer=None):
    axes = axes or [
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    entry = {
        "version": "0.4",
        "axes": axes,
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        ],
    }
    if outer is not None:
        entry["coordinateTransformations"] = [{"type": "scale", "scale": outer}]
    return entry


def test_ome_zarr_spacing(tmp_path, stack):
    path = tmp_path / "img.zarr"
    _write_ome_zarr(path, stack, _multiscale([1.5, 0.4, 0.4]))
    image = read_image(path)
    assert image.axes == "ZYX"
    np.testing.assert_array_equal(image.data, stack)
    assert_spacing(image.spacing, {"Z": 1.5, "Y": 0.4, "X": 0.4})


def test_ome_zarr_multiscale_scale_channel_axis_and_units(tmp_path, stack):
    path = tmp_path / "img.zarr"
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "nanometer"},
        {"name": "x", "type": "space", "unit": "nanometer"},
    ]
    _write_ome_zarr(
        path, stack[None], _multiscale([1.0, 1.5, 200.0, 200.0], axes, outer=[1.0, 2.0, 1.0, 1.0])
    )
    assert_spacing(read_image(path).spacing, {"Z": 3.0, "Y": 0.2, "X": 0.2})


def test_ome_zarr_odd_metadata_gives_none(tmp_path, stack):
    for i, entry in enumerate(
        [
            _multiscale(["a", -1, 0]),
            _multiscale([1.0, 1.0]),
            {"axes": ["z", "y", "x"], "datasets": "nonsense"},
            _multiscale(
                [1.0, 1.0, 1.0],
                [{"name": "z", "unit": "parsec"}, {"name": "y", "unit": "micrometer"}, "x"],
            ),
        ]
    ):
        path = tmp_path / f"img{i}.zarr"
        _write_ome_zarr(path, stack, entry)
        image = read_image(path)
        assert image.spacing is None
        np.testing.assert_array_equal(image.data, stack)


def test_png_has_no_spacing(tmp_path):
    import imageio.v3 as iio

    path = tmp_path / "img.png"
    iio.imwrite(path, np.zeros((8, 10), np.uint8))
    assert read_image(path).spacing is None


def test_npy_has_no_spacing(tmp_path, stack):
    path = tmp_path / "img.npy"
    np.save(path, stack)
    assert read_image(path).spacing is None


def test_real_3d_sample_still_reads():
    image = read_image(SAMPLE_3D)
    assert image.data.shape == (60, 256, 256)
    assert image.axes == "ZYX"
    # the voxel size of the napari sample, from the file itself (ImageJ metadata)
    from napari_aeseg._sample_data import NUCLEI_3D_VOXEL_UM

    assert image.spacing == pytest.approx(dict(zip("ZYX", NUCLEI_3D_VOXEL_UM, strict=True)))


def test_ome_zarr_0_5_under_ome_with_its_own_dataset_path(tmp_path, stack):
    """OME-Zarr 0.5 (zarr v3) keeps the multiscales under "ome"; the first dataset's path
    need not be "0"."""
    zarr = pytest.importorskip("zarr")
    if int(zarr.__version__.split(".")[0]) < 3:
        pytest.skip("zarr v3 format needs zarr 3")
    path = tmp_path / "img.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("s0", data=stack)
    root.create_array("s1", data=stack[:, ::2, ::2])
    entry = _multiscale([1.5, 0.4, 0.4])
    entry["datasets"][0]["path"] = "s0"
    del entry["version"]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [entry]}
    image = read_image(path)
    assert image.axes == "ZYX"
    np.testing.assert_array_equal(image.data, stack)
    assert_spacing(image.spacing, {"Z": 1.5, "Y": 0.4, "X": 0.4})


def test_imagej_calibrated_stack_without_z_step_has_a_z_step_of_one(tmp_path, stack):
    """ImageJ writes no ``spacing`` for a Z step of exactly 1 (its default); an
    uncalibrated or inch-calibrated stack gets none."""
    path = tmp_path / "fiji.tif"
    meta = {"unit": "micron", "axes": "ZYX"}
    tifffile.imwrite(path, stack, imagej=True, resolution=(1 / 0.3, 1 / 0.3), metadata=meta)
    assert_spacing(read_image(path).spacing, {"Z": 1.0, "Y": 0.3, "X": 0.3})
    meta = {"unit": "inch", "axes": "ZYX"}
    tifffile.imwrite(path, stack, imagej=True, resolution=(72, 72), metadata=meta)
    assert "Z" not in (read_image(path).spacing or {})


def test_plain_page_sequence_has_no_axes(tmp_path):
    # tifffile calls a plain sequence of pages I: Z, T or samples, nobody knows
    import tifffile

    tifffile.imwrite(tmp_path / "pages.tif", np.zeros((5, 16, 16), np.uint8))
    f = read_image(tmp_path / "pages.tif")
    assert f.data.shape == (5, 16, 16) and f.axes is None


def test_outputs_imagej_can_hold_are_calibrated_hyperstacks(tmp_path):
    import tifffile

    movie = np.random.default_rng(0).random((3, 4, 16, 20)).astype(np.float32)
    path = write_tiff(
        tmp_path / "m.tif", movie, axes="TZYX", spacing={"Z": 2.0, "Y": 0.5, "X": 0.25}, unit="nm"
    )
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and tif.series[0].axes == "TZYX"
        assert tif.imagej_metadata["unit"] == "nm" and tif.imagej_metadata["frames"] == 3
    back = read_image(path)
    np.testing.assert_array_equal(back.data, movie)
    assert back.axes == "TZYX" and back.spacing.unit == "nm"
    assert back.spacing == pytest.approx({"Z": 2.0, "Y": 0.5, "X": 0.25})
    # a read voxel size carries its unit into the next file
    again = read_image(
        write_tiff(tmp_path / "again.tif", movie[0], axes="ZYX", spacing=back.spacing)
    )
    assert again.spacing.unit == "nm" and again.spacing == pytest.approx(back.spacing)
    # what ImageJ cannot hold as it is keeps tifffile's metadata
    for data, axes in ((movie.astype(np.float64), "TZYX"), (movie[0], "YXZ")):
        with tifffile.TiffFile(write_tiff(tmp_path / "other.tif", data, axes=axes)) as tif:
            assert not tif.is_imagej and tif.series[0].axes == axes
