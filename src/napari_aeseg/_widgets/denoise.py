"""The *Denoise* dock widget: a session model + an image layer -> one output layer.

Tiled inference (:meth:`DenoiserModel.iter_denoise`) runs in a napari thread worker with a
progress bar per tile and Cancel. The result goes to one layer named
``"<input> denoised (<model>)"``, which a second run updates instead of adding a copy; it
carries the input's scale, translation, rotation, shear and affine, so it overlays exactly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QWidget,
)

from ..core.denoiser import DenoiserModel
from ..core.devices import resolve_device
from ..core.errors import AesegError, InvalidInputError
from ..core.tiling import Cancelled, TileProgress
from ._common import (
    DeviceCombo,
    Failure,
    ImageLayerCombo,
    StopsWhenUndocked,
    WrappedLabel,
    ask_and_load_denoiser,
    axes_for_model,
    layer_data,
    report_failure,
    row_widget,
    scrolling_layout,
    short_description,
    spatial_metadata,
    start_job,
)
from .session import SESSION
from .train import show_result_layer


@dataclass(frozen=True)
class Denoised:
    image: np.ndarray


def denoise_steps(model: DenoiserModel, data, *, cancel: threading.Event, **options):
    """The worker's generator: yields :class:`TileProgress`, returns Denoised or Failure."""
    try:
        image = np.asarray(data)  # lazy (dask) data is read here, in the worker
        result = yield from model.iter_denoise(image, cancel=cancel.is_set, **options)
        return Denoised(result)
    except Exception as exc:  # noqa: BLE001 - handed to the widget, which reports it
        return Failure(exc)


def parse_tiling(text: str, name: str) -> str | tuple[int, ...]:
    """``auto``, one number, or one number per spatial axis (``16,256,256``)."""
    text = text.strip().lower()
    if text in ("", "auto"):
        return "auto"
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise InvalidInputError(
            f"{name} '{text}' is not 'auto', a number or numbers separated by commas"
        ) from None
    if not values:
        return "auto"
    return values


def denoiser_names() -> list[str]:
    """The session's denoisers (it also holds segmenters, which are not offered here)."""
    return [n for n in SESSION.names() if isinstance(SESSION.get(n), DenoiserModel)]


def output_name(layer_name: str, model_name: str) -> str:
    return f"{layer_name} denoised ({model_name})"


class DenoiseWidget(StopsWhenUndocked, QWidget):
    """Denoise an image layer with a model of this session (or one from a file)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._worker = None
        self._running = False
        self._cancel = threading.Event()
        self._build()
        SESSION.changed.connect(self._on_session_changed)
        on_change = self._on_session_changed
        self.destroyed.connect(lambda *_: SESSION.changed.disconnect(on_change))
        cancel = self._cancel
        self.destroyed.connect(lambda *_: cancel.set())
        self._on_session_changed("")
        self._update_axes()  # the layer chosen before its signal was connected
        self._update_buttons()

    def _build(self) -> None:
        outer = scrolling_layout(self)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        outer.addLayout(form)

        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Models trained or loaded in this session")
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.load_button = QPushButton("Load...")
        self.load_button.setToolTip("Load a model file (.aeseg) into this session")
        self.load_button.clicked.connect(self.load_model)
        model_row = row_widget((self.model_combo, 1), self.load_button)
        form.addRow("Model", model_row)
        self.model_info = WrappedLabel("No model yet: train one or load a file.")
        form.addRow(self.model_info)

        self.layer_combo = ImageLayerCombo(self.viewer, self)
        self.layer_combo.layer_changed.connect(self._update_axes)
        form.addRow("Image", self.layer_combo)
        self.axes_edit = QLineEdit()
        self.axes_edit.setToolTip(
            "Axes of the image (YX, ZYX, TYX, YXC...). A 2D model denoises a stack slice by "
            "slice when its Z axis is called S."
        )
        form.addRow("Axes", self.axes_edit)
        self.tile_edit = _editable_combo(["auto", "256", "512", "1024"])
        self.tile_edit.setToolTip(
            "Tile size in pixels (one value, or one per spatial axis); auto fits the device"
        )
        form.addRow("Tile size", self.tile_edit)
        self.overlap_edit = _editable_combo(["auto", "16", "32", "64"])
        self.overlap_edit.setToolTip("Overlap between tiles, blended smoothly; auto hides seams")
        form.addRow("Tile overlap", self.overlap_edit)
        self.device_combo = DeviceCombo()
        form.addRow("Device", self.device_combo)
        self.tta_check = QCheckBox("Average over flips (slower, a little cleaner)")
        self.tta_check.setToolTip(
            "Test-time augmentation: denoise every mirror image of each tile and average "
            "them (4 passes in 2D, 8 in 3D). Usually worth a few tenths of a dB."
        )
        form.addRow("", self.tta_check)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Denoise")
        self.cancel_button = QPushButton("Cancel")
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        outer.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m tiles")
        self.progress.setValue(0)
        outer.addWidget(self.progress)
        self.status = WrappedLabel("")
        outer.addWidget(self.status)
        outer.addStretch(1)

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        return self._running

    def model(self) -> DenoiserModel | None:
        name = self.model_combo.currentText()
        model = SESSION.get(name) if name in SESSION else None
        return model if isinstance(model, DenoiserModel) else None

    def model_names(self) -> list[str]:
        return [self.model_combo.itemText(i) for i in range(self.model_combo.count())]

    def _on_session_changed(self, name: str) -> None:
        names = denoiser_names()
        current = self.model_combo.currentText()
        added = name if name in names and name not in self.model_names() else None
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems(names)
        if added is not None:
            self.model_combo.setCurrentText(added)
        elif current in names:
            self.model_combo.setCurrentText(current)
        self.model_combo.blockSignals(False)
        if self.model_combo.currentText() != current:
            self._on_model_changed()
        else:  # the same name, perhaps a newer version of it: keep the user's axes
            self._show_model_info()
            self._update_buttons()

    def _on_model_changed(self, *_) -> None:
        self._show_model_info()
        self._update_axes()
        self._update_buttons()

    def _show_model_info(self) -> None:
        model = self.model()
        self.model_info.setText(
            short_description(model) if model else "No model yet: train one or load a file."
        )
        self.model_info.setToolTip(model.describe() if model else "")

    def _update_axes(self) -> None:
        layer = self.layer_combo.layer()
        if layer is None:
            return
        self.axes_edit.setText(axes_for_model(layer, self.model()))

    def _update_buttons(self) -> None:
        self.run_button.setEnabled(not self._running and self.model() is not None)
        self.cancel_button.setEnabled(self._running)
        self.load_button.setEnabled(not self._running)

    # ------------------------------------------------------------------ actions
    def load_model(self) -> None:
        model = ask_and_load_denoiser(self)
        if model is None:
            return
        name = SESSION.add_model(model)
        self.model_combo.setCurrentText(name)

    def run(self, *, sync: bool = False) -> None:
        """Denoise the chosen layer; the output layer is added once and updated after."""
        if self._running:
            return
        model = self.model()
        layer = self.layer_combo.layer()
        if model is None or layer is None:
            self.status.setText("Not started: choose a model and an image layer.")
            show_error("Choose a model and an image layer first.")
            return
        data = layer_data(layer)
        try:
            axes = self.axes_edit.text().strip().upper() or None
            model.check_layout(tuple(data.shape), axes)
            options = {
                "axes": axes,
                "tile": parse_tiling(self.tile_edit.currentText(), "tile size"),
                "overlap": parse_tiling(self.overlap_edit.currentText(), "overlap"),
                "device": resolve_device(self.device_combo.device()),
                "tta": self.tta_check.isChecked(),
            }
        except AesegError as exc:
            self.status.setText(f"Not started: {str(exc).splitlines()[0]}")
            report_failure(exc, "Denoising")
            return
        note = model.intensity_note(data, axes)
        if note:
            show_warning(f"Denoise: {note}")
        self._target = (
            output_name(layer.name, model.name),
            spatial_metadata(layer),
            {
                "rgb": layer.rgb,
                "colormap": None if layer.rgb else layer.colormap,
                "contrast_limits": tuple(layer.contrast_limits),
                "dtype": np.dtype(layer.dtype),
            },
        )
        self._cancel.clear()
        self._running = True
        self.progress.setRange(0, 0)  # busy until the first tile tells how many there are
        self.status.setText(f"Denoising '{layer.name}' with '{model.name}'...")
        self._update_buttons()
        self._worker = start_job(
            denoise_steps(model, data, cancel=self._cancel, **options),
            on_yield=self._on_yield,
            on_return=self._on_return,
            sync=sync,
        )

    def cancel(self) -> None:
        self._cancel.set()

    def _on_yield(self, item) -> None:
        if isinstance(item, TileProgress):
            self.progress.setMaximum(max(1, item.total))
            self.progress.setValue(item.done)

    def _on_return(self, result) -> None:
        self._running = False
        self._worker = None
        if self.progress.maximum() == 0:  # ended before the first tile
            self.progress.setRange(0, 1)
            self.progress.reset()
        try:
            if isinstance(result, Denoised):
                name, metadata, display = self._target
                self.status.setText("Adding the result...")
                layer = show_result_layer(self.viewer, name, result.image, metadata, display)
                self.status.setText(f"Done: layer '{layer.name}'.")
            elif isinstance(result, Failure) and isinstance(result.error, Cancelled):
                self.progress.setValue(0)
                self.status.setText("Cancelled; no layer was changed.")
                show_info("Denoising cancelled.")
            elif isinstance(result, Failure):
                self.status.setText("Failed; no layer was changed.")
                report_failure(result.error, "Denoising")
        finally:
            self._update_buttons()

    def _on_undocked(self) -> None:
        self._cancel.set()


def _editable_combo(items: list[str]) -> QComboBox:
    box = QComboBox()
    box.setEditable(True)
    box.addItems(items)
    return box
