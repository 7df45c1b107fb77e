"""Manifest contributions in a real viewer: samples, docking, the model reader, label writers."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_aeseg._reader import get_reader
from napari_aeseg._widgets.denoise import DenoiseWidget
from napari_aeseg._widgets.train import TrainDenoiserWidget
from napari_aeseg.core.image_io import read_image
from napari_aeseg.core.training import train_denoiser

from .conftest import layer_state

SAMPLES = {
    "nuclei_2d": [("nuclei", "image", (512, 512)), ("nuclei ground truth", "labels", (512, 512))],
    "nuclei_3d": [("nuclei 3D", "image", (60, 256, 256))],
    "synthetic_2d": [
        ("synthetic clean", "image", (256, 256)),
        ("synthetic noisy", "image", (256, 256)),
        ("synthetic ground truth", "labels", (256, 256)),
    ],
    "synthetic_3d": [
        ("synthetic 3D clean", "image", (48, 128, 128)),
        ("synthetic 3D noisy", "image", (48, 128, 128)),
        ("synthetic 3D ground truth", "labels", (48, 128, 128)),
    ],
    "retina": [("retina", "image", (512, 512, 3))],
}


@pytest.mark.parametrize("key", list(SAMPLES))
def test_each_sample_opens(make_napari_viewer, key):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-aeseg", key)
    got = [(ly.name, type(ly).__name__.lower(), np.shape(ly.data)) for ly in viewer.layers]
    assert got == SAMPLES[key]
    if key == "retina":
        assert viewer.layers["retina"].rgb
    if key == "nuclei_2d":
        labels = viewer.layers["nuclei ground truth"].data
        assert labels.max() == 125 and np.issubdtype(labels.dtype, np.integer)
    if key == "nuclei_3d":
        # its voxel size: the Segment widget splits its nuclei in micrometres
        stack = viewer.layers["nuclei 3D"]
        np.testing.assert_allclose(stack.scale, (0.29, 0.26, 0.26))
        assert tuple(stack.axis_labels) == ("z", "y", "x")


def test_widgets_dock_through_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    _, train = viewer.window.add_plugin_dock_widget("napari-aeseg", "Train denoiser")
    _, denoise = viewer.window.add_plugin_dock_widget("napari-aeseg", "Denoise")
    assert isinstance(train, TrainDenoiserWidget) and isinstance(denoise, DenoiseWidget)
    # the layer pickers follow the viewer
    viewer.add_image(np.zeros((32, 32), np.float32), name="a")
    viewer.add_image(np.zeros((32, 32), np.float32), name="b")
    assert [train.layer_list.item(i).text() for i in range(train.layer_list.count())] == ["a", "b"]
    assert denoise.layer_combo.count() == 2
    viewer.layers["a"].name = "renamed"
    assert denoise.layer_combo.itemText(0) == "renamed"
    viewer.layers.remove("b")
    assert train.layer_list.count() == 1 and denoise.layer_combo.count() == 1


def test_inputs_default_to_the_users_image_and_the_samples_truth_is_for_scoring(
    make_napari_viewer,
):
    """After training, the (active) preview layer is no input; a result is not the
    default input either; a sample's ground truth is offered for scoring, not as labels."""
    from napari.layers import Image

    from napari_aeseg._widgets._common import PREVIEW_METADATA, add_output

    viewer = make_napari_viewer()
    viewer.open_sample("napari-aeseg", "nuclei_2d")
    assert not viewer.layers["nuclei ground truth"].visible
    denoised = Image(np.zeros((512, 512), np.float32), name="nuclei denoised")
    add_output(viewer, denoised, "nuclei denoised")  # as the Denoise widget adds it
    viewer.add_image(np.zeros((256, 256), np.float32), name="nuclei preview",
                     metadata=dict(PREVIEW_METADATA))  # fmt: skip
    assert viewer.layers.selection.active.name == "nuclei preview"
    _, denoise = viewer.window.add_plugin_dock_widget("napari-aeseg", "Denoise")
    _, segment = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    for combo in (denoise.layer_combo, segment.image_combo):
        items = [combo.itemText(i) for i in range(combo.count())]
        assert items == ["nuclei", "nuclei denoised"] and combo.currentText() == "nuclei"
    # the truth is listed as labels (dense masks to train from), never chosen by default
    assert segment.labels_combo.currentText() == "" and segment.labels_combo.count() == 1
    assert segment.truth_combo.currentText() == "nuclei ground truth"
    segment.new_scribble_layer()
    assert segment.labels_combo.currentText() == "nuclei scribbles"
    assert segment.labels_combo.itemText(1) == "nuclei ground truth", "listed last"
    assert segment.truth_combo.currentText() == "nuclei ground truth"
    # a user's 'none' stays, when the truth is renamed or a sample opened again
    segment.truth_combo.setCurrentText("none")
    segment.truth_combo.activated.emit(0)  # as a click does
    viewer.layers["nuclei ground truth"].name = "truth (renamed)"
    viewer.open_sample("napari-aeseg", "nuclei_2d")
    assert segment.truth_combo.currentText() == "none"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, nuclei):
    model = train_denoiser(
        nuclei[1],
        mode="n2v",
        axes="YX",
        steps=3,
        patch_size=32,
        batch_size=2,
        depth=1,
        base_channels=4,
        device="cpu",
    )
    model.name = "dropped"
    return model.save(tmp_path_factory.mktemp("models") / "dropped.aeseg")


def test_dropping_a_model_file_registers_it(make_napari_viewer, model_file, empty_session):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    _, denoise = viewer.window.add_plugin_dock_widget("napari-aeseg", "Denoise")
    before = layer_state(viewer)
    viewer.open(str(model_file), plugin="napari-aeseg")
    assert layer_state(viewer) == before, "no layer is added for a model"
    assert empty_session.names() == ["dropped"]
    assert denoise.model_names() == ["dropped"]
    assert denoise.run_button.isEnabled()


def test_reader_declines_other_files(tmp_path, model_file):
    tif = tmp_path / "image.tif"
    tifffile.imwrite(tif, np.zeros((8, 8), np.uint8))
    assert get_reader(str(tif)) is None
    assert get_reader(str(tmp_path / "missing.aeseg")) is None
    assert get_reader(str(model_file)) is not None
    assert get_reader([str(model_file), str(tif)]) is None


def test_a_broken_model_file_says_so(make_napari_viewer, tmp_path, empty_session):
    bad = tmp_path / "broken.aeseg"
    bad.write_bytes(b"not a model")
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="not a readable napari-aeseg model"):
        viewer.open(str(bad), plugin="napari-aeseg")
    assert len(viewer.layers) == 0 and empty_session.names() == []


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.int64])
@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_labels_writers_round_trip(make_napari_viewer, tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, np.iinfo(dtype).max, (3, 40, 50), dtype=dtype, endpoint=True)
    labels[0, 0, 0] = np.iinfo(dtype).max
    viewer = make_napari_viewer()
    layer = viewer.add_labels(
        labels, name="cells", scale=(2.0, 0.5, 0.5), translate=(1.0, 0.0, 3.0)
    )
    layer.units = ("micrometer",) * 3
    path = tmp_path / f"cells{suffix}"
    written = viewer.layers.save(str(path), selected=False, plugin="napari-aeseg")
    assert written == [str(path)]
    if suffix == ".tif":
        back = tifffile.imread(path)
    else:
        import zarr

        group = zarr.open_group(str(path), mode="r")
        back = group["0"][:]
        ms = group.attrs["multiscales"][0]
        assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
        transforms = ms["datasets"][0]["coordinateTransformations"]
        assert transforms[0]["scale"] == [2.0, 0.5, 0.5]
        assert transforms[1]["translation"] == [1.0, 0.0, 3.0]
        assert [a.get("unit") for a in ms["axes"]] == ["micrometer"] * 3
    # the scale comes back as the voxel size (the CLI and the widgets use it)
    spacing = read_image(path).spacing
    assert spacing == pytest.approx({"Z": 2.0, "Y": 0.5, "X": 0.5})
    # an ImageJ hyperstack (Fiji's calibration) where ImageJ holds the type, with the unit
    imagej = suffix == ".tif" and dtype in (np.uint8, np.uint16)
    if suffix == ".tif":
        with tifffile.TiffFile(path) as tif:
            assert tif.is_imagej == imagej
    assert spacing.unit == ("micron" if imagej or suffix == ".zarr" else None)
    assert back.dtype == labels.dtype
    np.testing.assert_array_equal(back, labels)


def test_named_classes_are_saved_with_the_labels(make_napari_viewer, tmp_path):
    """The class names of a semantic result (its features) go into a table beside a TIFF,
    and into an OME-Zarr's image-label properties."""
    import zarr

    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.array([[1, 2], [3, 1]], np.uint8), name="tissue")
    layer.features = {"index": [1, 2, 3], "class": ["background", "tumour, grade 2", "stroma"]}
    written = viewer.layers.save(str(tmp_path / "tissue_labels.tif"), plugin="napari-aeseg")
    assert written == [str(tmp_path / "tissue_labels.tif"), str(tmp_path / "tissue_classes.csv")]
    table = (tmp_path / "tissue_classes.csv").read_text()
    assert table == 'label,name\n1,background\n2,"tumour, grade 2"\n3,stroma\n'
    viewer.layers.save(str(tmp_path / "tissue.zarr"), plugin="napari-aeseg")
    props = zarr.open_group(str(tmp_path / "tissue.zarr"), mode="r").attrs["image-label"]
    assert props["properties"][1] == {"label-value": 2, "class": "tumour, grade 2"}
    # saved again without names: the old table goes (it would name the wrong classes)
    layer.features = {}
    written = viewer.layers.save(str(tmp_path / "tissue_labels.tif"), plugin="napari-aeseg")
    assert written == [str(tmp_path / "tissue_labels.tif")]
    assert not (tmp_path / "tissue_classes.csv").exists()
    # a file of the user's of that name is kept; other feature tables are no class names
    (tmp_path / "tissue_classes.csv").write_text("my notes")
    layer.features = {"index": [1, 2, 3], "class": ["a", "b", "c"]}
    with pytest.warns(UserWarning, match="is not a class table"):
        viewer.layers.save(str(tmp_path / "tissue_labels.tif"), plugin="napari-aeseg")
    assert (tmp_path / "tissue_classes.csv").read_text() == "my notes"
    layer.features = {"index": [1, 2, 3], "class": ["a", "b", "c"], "area": [4, 5, 6]}
    written = viewer.layers.save(str(tmp_path / "cells_labels.tif"), plugin="napari-aeseg")
    assert written == [str(tmp_path / "cells_labels.tif")]


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_labels_of_a_movie_keep_time_apart_from_space(tmp_path, suffix):
    """A layer whose axis labels say t, y, x: the frame interval is no voxel size."""
    from napari_aeseg._writer import write_labels_tiff, write_labels_zarr

    meta = {
        "scale": (5.0, 0.5, 0.5),
        "axis_labels": ("t", "y", "x"),
        "units": ("second", "micrometer", "micrometer"),
    }
    write = write_labels_tiff if suffix == ".tif" else write_labels_zarr
    path = tmp_path / f"movie{suffix}"
    write(str(path), np.ones((3, 8, 8), np.uint16), meta)
    back = read_image(path)
    assert back.axes == "TYX" and back.spacing == pytest.approx({"Y": 0.5, "X": 0.5})
    assert back.spacing.unit == "micron"


def test_zarr_writer_replaces_an_existing_store(tmp_path):
    import zarr

    from napari_aeseg._writer import write_labels_zarr

    path = tmp_path / "seg.zarr"
    write_labels_zarr(str(path), np.ones((10, 10), np.uint16), {"name": "a"})
    write_labels_zarr(str(path), np.full((12, 8), 7, np.uint16), {"name": "b"})
    back = zarr.open_group(str(path), mode="r")["0"][:]
    assert back.shape == (12, 8) and (back == 7).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.zarr"]


def test_denoise_offers_only_denoisers(make_napari_viewer, model_file, empty_session):
    from napari_aeseg.api import load_model

    class Segmenter:  # the session also holds segmenters of the Segment widget
        kind = "segmenter"
        name = "seg"

    empty_session.add_model(Segmenter())
    viewer = make_napari_viewer()
    _, denoise = viewer.window.add_plugin_dock_widget("napari-aeseg", "Denoise")
    assert denoise.model_names() == [] and not denoise.run_button.isEnabled()
    empty_session.add_model(load_model(model_file))
    assert denoise.model_names() == ["dropped"]


def test_a_model_added_before_docking_is_ready(make_napari_viewer, model_file, empty_session):
    """What ``aeseg demo`` does: register a model, then dock Denoise through the manifest."""
    from napari_aeseg._widgets.session import SESSION
    from napari_aeseg.api import load_model

    SESSION.add_model(load_model(model_file))
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    _, denoise = viewer.window.add_plugin_dock_widget("napari-aeseg", "Denoise")
    assert denoise.model_combo.currentText() == "dropped"
    assert denoise.layer_combo.currentText() == "img"
    assert denoise.run_button.isEnabled()
