"""Pieces shared by the dock widgets: layer pickers, device choice, jobs, errors, metadata."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QSize, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.config import AXES_LETTERS
from ..core.data import guess_axes
from ..core.devices import DEVICE_CHOICES, available_devices, describe_device, resolve_device
from ..core.errors import AesegError
from ..core.model_io import MODEL_SUFFIX

log = logging.getLogger("napari_aeseg")

MODEL_FILTER = f"napari-aeseg models (*{MODEL_SUFFIX});;All files (*)"


# --------------------------------------------------------------------------- errors and jobs
@dataclass(frozen=True)
class Failure:
    """What a job returns instead of raising, so no traceback dialog ever reaches the user."""

    error: BaseException


def report_failure(error: BaseException, task: str) -> None:
    """Show an engine error as it is; anything else as one short line (traceback to the log)."""
    if isinstance(error, AesegError):
        show_error(str(error))
        return
    log.error("%s failed", task, exc_info=error)
    first = str(error).splitlines()[0] if str(error) else ""
    detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
    show_error(f"{task} failed unexpectedly ({detail}); the layers are unchanged.")


class WorkerJob:
    """What a widget (main thread) and its worker share: the trainer and a stop flag.

    ``idle`` is set while no worker runs the job, so a closing widget can wait for it.
    """

    def __init__(self) -> None:
        self.trainer: Any = None
        self.stop_requested = threading.Event()
        self.idle = threading.Event()
        self.idle.set()

    def stop(self) -> None:
        self.stop_requested.set()
        if self.trainer is not None:
            self.trainer.stop()

    def shutdown(self, wait_s: float = 3.0) -> None:
        """Stop, and give the worker ``wait_s`` seconds to end its step."""
        self.stop()
        self.idle.wait(wait_s)


def start_job(
    gen: Generator,
    *,
    on_yield: Callable[[Any], None],
    on_return: Callable[[Any], None],
    on_exit: Callable[[], None] | None = None,
    sync: bool = False,
):
    """Drive ``gen`` in a napari thread worker (or right here when ``sync``).

    ``gen`` must not raise (the job generators return a :class:`Failure` instead); its
    values go to ``on_yield`` and its return value to ``on_return``, both on the main thread.
    ``on_exit`` runs in the worker thread when it ends for any reason, including napari
    aborting the worker when its window closes (then ``gen`` is simply not resumed).
    Returns the worker, or ``None`` when run synchronously.
    """
    on_yield = _reporting(on_yield)
    on_return = _reporting(on_return)
    if sync:
        while True:
            try:
                item = next(gen)
            except StopIteration as done:
                if on_exit is not None:
                    on_exit()
                on_return(done.value)
                return None
            on_yield(item)

    from napari.qt.threading import create_worker

    def drive():
        return (yield from gen)

    worker = create_worker(drive, _start_thread=False, _ignore_errors=True)
    worker.yielded.connect(on_yield)
    worker.returned.connect(on_return)
    worker.errored.connect(lambda exc: on_return(Failure(exc)))
    if on_exit is not None:
        worker.finished.connect(on_exit, Qt.ConnectionType.DirectConnection)
    worker.start()
    return worker


def _reporting(handler: Callable[[Any], None]) -> Callable[[Any], None]:
    """A main-thread handler whose unexpected errors become a notification, not a crash."""

    owner = getattr(handler, "__self__", None)

    def guarded(value: Any) -> None:
        if _deleted(owner):  # the viewer closed while the job ran: nothing left to show
            return
        try:
            handler(value)
        except Exception as exc:  # noqa: BLE001 - reported to the user and logged
            if _deleted(owner) or any(
                m in str(exc) for m in ("has been deleted", "already deleted")
            ):
                log.debug("result of a job whose widget is gone: %s", exc)
                return
            report_failure(exc, "Showing the result")

    return guarded


def _deleted(widget) -> bool:
    """Whether the Qt object behind ``widget`` is gone (its window closed)."""
    if widget is None:
        return False
    try:
        from qtpy import sip

        return sip.isdeleted(widget)
    except (ImportError, TypeError):
        pass
    try:  # PySide
        import shiboken6

        return not shiboken6.isValid(widget)
    except (ImportError, TypeError):
        return False


class WrappedLabel(QLabel):
    """A word-wrapped label that keeps the height of all its lines.

    A plain word-wrapped QLabel only asks for one line, so a dock taller than the window
    squeezes it and cuts its text; this one asks for the height its text needs at its width.
    """

    def __init__(self, text: str = "") -> None:
        super().__init__(text)
        self.setWordWrap(True)

    def _fit(self) -> None:
        height = self.heightForWidth(self.width())
        if height > 0 and height != self.minimumHeight():
            self.setMinimumHeight(height)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's name
        super().setText(text)
        self._fit()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._fit()


class _VerticalScroll(QScrollArea):
    """Scrolls up and down only: as wide as its contents need, as tall as they like."""

    def _bar(self) -> int:
        return self.verticalScrollBar().sizeHint().width()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        hint = self.widget().sizeHint()
        return QSize(hint.width() + self._bar(), hint.height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        # all of a short dock stays visible; a tall one scrolls down to 240 px
        hint = self.widget().minimumSizeHint()
        return QSize(hint.width() + self._bar(), min(hint.height(), 240))

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt's name
        # the contents grew or shrank (a row shown, a longer layer name): ask the dock again
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)


def scrolling_layout(widget: QWidget) -> QVBoxLayout:
    """The layout of ``widget``'s contents, inside a scroll area that fills it: a dock taller
    than the window scrolls instead of squeezing its rows or growing the window."""
    scroll = _VerticalScroll()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    contents = QWidget()
    scroll.setWidget(contents)
    contents.installEventFilter(scroll)
    frame = QVBoxLayout(widget)
    frame.setContentsMargins(0, 0, 0, 0)
    frame.addWidget(scroll)
    return QVBoxLayout(contents)


def bring_into_view(widget: QWidget) -> None:
    """Scroll the dock's scroll area (:func:`scrolling_layout`) so that ``widget`` shows: a
    run started with *Advanced* open keeps its status and progress in sight."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QScrollArea):
        parent = parent.parentWidget()
    if parent is None:
        return

    def scroll() -> None:
        try:
            parent.ensureWidgetVisible(widget, 0, 24)
        except RuntimeError:  # the dock was closed in the meantime
            pass

    QTimer.singleShot(0, scroll)  # once the contents' new size (a section opened) is laid out


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StopsWhenUndocked:
    """Mixin for dock widgets: ``_on_undocked`` runs when napari removes the widget, and
    when the widget is closed.

    napari's dock close button takes the widget out of its dock (the parent becomes None)
    without deleting it, so a running job has to be stopped here, not only on destruction.
    """

    _docked = False

    def event(self, ev):  # noqa: D401 (Qt override)
        if ev.type() == QEvent.Type.ParentChange:
            if self.parent() is None and self._docked:
                self._on_undocked()
            self._docked = self.parent() is not None
        return super().event(ev)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self._on_undocked()
        super().closeEvent(event)

    def _on_undocked(self) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- layers
def layer_data(layer: Image):
    """The full-resolution data of a layer, not read yet when it is lazy (dask, zarr)."""
    data = layer.data[0] if layer.multiscale else layer.data
    return np.asarray(data) if isinstance(data, np.ndarray) else data


def labelled_axes(layer: Image) -> str | None:
    """A layer's axes as its axis labels name them (RGB adds C), or None if they do not."""
    shape = tuple(layer_data(layer).shape)
    labels = [str(a).strip().upper() for a in getattr(layer, "axis_labels", ())]
    if layer.rgb:
        labels.append("C")
    if (
        len(labels) == len(shape)
        and all(len(a) == 1 and a in AXES_LETTERS for a in labels)
        and len(set(labels)) == len(labels)
        and {"Y", "X"} <= set(labels)
    ):
        return "".join(labels)
    return None


def guess_layer_axes(layer: Image) -> str:
    """Axes of a layer: its axis labels when they are axis letters, else a guess (RGB: YXC)."""
    known = labelled_axes(layer)
    if known is not None:
        return known
    shape = tuple(layer_data(layer).shape)
    try:
        guess = guess_axes(shape, rgb=layer.rgb)
    except AesegError:
        return ""
    # a few planes are guessed to be channels, unless the layer spaces them out
    c = guess.find("C")
    if c >= 0 and not layer.rgb and abs(float(layer.scale[c])) != 1.0:
        if c == 0 and "Z" not in guess:
            guess = "Z" + guess[1:]
        else:
            guess = CHANNELS_AS_PLANES.get(guess, (guess,))[0]
    return guess


def axes_for_model(layer, model) -> str:
    """The axes to run a model (a denoiser, or one as encoder) on a layer with: its axis labels if it has them, else the first of
    the model's axes, the guess, and the guess with its channels as planes that fits the
    model. A 2D model goes through a stack slice by slice (Z becomes S)."""
    known = labelled_axes(layer)
    guess = known or guess_layer_axes(layer)
    if model is None:
        return guess
    shape = tuple(layer_data(layer).shape)
    candidates = [guess] if known else [model.config.axes, guess, *_other_readings(guess)]
    fitting = []
    for axes in candidates:
        if model.config.spatial_dims == 2 and "Z" in axes:
            axes = axes.replace("Z", "S")
        if len(set(axes)) != len(axes):
            continue
        try:
            model.check_layout(shape, axes)
        except AesegError:
            continue
        fitting.append(axes)
    if fitting:
        return fitting[0]
    return guess.replace("Z", "S") if model.config.spatial_dims == 2 else guess


#: where a guessed channel axis may be planes after all: each guess, and other readings
CHANNELS_AS_PLANES = {"ZCYX": ("TZYX",), "TZCYX": ("TCZYX",)}


def _other_readings(guess: str) -> list[str]:
    """Readings of a guess with its channels as planes (a movie of few planes is guessed
    ZCYX, like an ImageJ hyperstack): tried when the guess does not fit a model."""
    return [guess.replace("C", "Z"), *CHANNELS_AS_PLANES.get(guess, ())]


def spatial_metadata(layer: Image) -> dict:
    """What an output layer needs to overlay ``layer`` exactly (and to look alike)."""
    meta = {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "rotate": np.asarray(layer.rotate),
        "shear": np.asarray(layer.shear),
        "affine": layer.affine.affine_matrix,
    }
    for key in ("units", "axis_labels"):
        if hasattr(layer, key):
            meta[key] = tuple(str(u) for u in getattr(layer, key))
    return meta


def shifted_metadata(meta: dict, offset) -> dict:
    """``meta`` for a crop that starts at data index ``offset`` (one value per layer dim)."""
    from napari.utils.transforms import Affine

    offset = np.asarray(offset, float)
    try:
        linear = Affine(scale=meta["scale"], rotate=meta["rotate"], shear=meta["shear"])
        step = linear.linear_matrix @ offset
    except (ValueError, TypeError):
        step = np.asarray(meta["scale"]) * offset
    return {**meta, "translate": tuple(np.asarray(meta["translate"]) + step)}


def short_description(model) -> str:
    """One line for a narrow dock: mode, axes, channels, steps (the full text is a tooltip)."""
    c = model.config
    channels = f" · {c.n_channels} channels" if c.n_channels > 1 else ""
    return f"{c.mode} · axes {c.axes}{channels} · {model.trained_steps} steps"


def image_layers(viewer) -> list[Image]:
    return [ly for ly in viewer.layers if isinstance(ly, Image)]


#: ``layer.metadata`` of the Train widget's preview layer (never a training input)
PREVIEW_METADATA = {"napari_aeseg": "training preview"}


def is_preview(layer) -> bool:
    return layer.metadata.get("napari_aeseg") == PREVIEW_METADATA["napari_aeseg"]


def is_ground_truth(layer) -> bool:
    """A sample's (or the demo's) ground truth: for scoring, not for training."""
    from .._sample_data import GROUND_TRUTH_METADATA

    return layer.metadata.get("napari_aeseg") == GROUND_TRUTH_METADATA["napari_aeseg"]


#: ``layer.metadata`` keys naming the output a layer holds ("nuclei segmentation"...) and
#: the layer's own ``unique_id``: a run updates only layers it made, found by this mark, never
#: a user's layer of the same name, nor a copy the user made of an output (napari copies the
#: metadata, not the id)
OUTPUT_KEY = "napari_aeseg_output"
OUTPUT_ID_KEY = "napari_aeseg_output_layer"


def is_output(layer) -> bool:
    return layer.metadata.get(OUTPUT_ID_KEY) == str(layer.unique_id)


def output_layer(viewer, name: str):
    """The layer this plugin made for the output ``name`` (also after a rename), or None."""
    for layer in viewer.layers:
        if is_output(layer) and layer.metadata.get(OUTPUT_KEY) == name:
            return layer
    return None


def add_output(viewer, layer, name: str, index: int | None = None):
    """Add ``layer`` as the output ``name`` (napari renames it if a user's layer has that
    name), at ``index`` of the layer list or on top."""
    layer.metadata[OUTPUT_KEY] = name
    layer.metadata[OUTPUT_ID_KEY] = str(layer.unique_id)
    if index is None:
        viewer.add_layer(layer)
    else:
        viewer.layers.insert(index, layer)
    return layer


class _FollowsLayers:
    """Mixin: refresh from the viewer's image layers on insert/remove/move/rename."""

    def _follow(self, viewer) -> None:
        self._viewer = viewer
        events = viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved):
            ev.connect(self._on_layers_changed)
        self._refresh()
        self.destroyed.connect(lambda *_: _disconnect(viewer, self._on_layers_changed))

    def _on_layers_changed(self, event=None) -> None:
        self._refresh()

    def _watch_names(self, layers) -> None:
        for ly in layers:
            ly.events.name.connect(self._on_layers_changed)


def _disconnect(viewer, callback) -> None:
    events = viewer.layers.events
    for ev in (events.inserted, events.removed, events.moved):
        ev.disconnect(callback)
    for ly in viewer.layers:
        ly.events.name.disconnect(callback)


class ImageLayerCombo(_FollowsLayers, QComboBox):
    """A dropdown of the viewer's image layers that follows them."""

    layer_changed = Signal()

    def __init__(self, viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.currentIndexChanged.connect(lambda *_: self.layer_changed.emit())
        self._follow(viewer)

    def _refresh(self) -> None:
        # the Train widget's preview (a denoised crop) is no input; it is active when added
        layers = [ly for ly in image_layers(self._viewer) if not is_preview(ly)]
        self._watch_names(layers)
        current = self.currentText()
        names = [ly.name for ly in layers]
        if names == [self.itemText(i) for i in range(self.count())]:
            return
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        active = self._viewer.layers.selection.active
        inputs = [ly.name for ly in layers if not is_output(ly)]
        if current in names:
            self.setCurrentText(current)
        elif isinstance(active, Image) and active.name in names:
            self.setCurrentText(active.name)
        elif inputs:  # a user's image rather than one of the plugin's results
            self.setCurrentText(inputs[-1])
        self.blockSignals(False)
        if self.currentText() != current:  # not on every change of the layer list
            self.layer_changed.emit()

    def layer(self) -> Image | None:
        name = self.currentText()
        return self._viewer.layers[name] if name in self._viewer.layers else None


class ImageLayerList(_FollowsLayers, QListWidget):
    """The viewer's image layers with check boxes: several can be ticked (training images)."""

    layers_changed = Signal()

    def __init__(self, viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.setToolTip("Tick the image layers to train on (several are used together)")
        self.itemChanged.connect(lambda *_: self.layers_changed.emit())
        self._follow(viewer)

    def sizeHint(self):
        hint = super().sizeHint()
        hint.setHeight(4 * self.fontMetrics().height() + 12)
        return hint

    def _refresh(self) -> None:
        # the plugin's own results (previews, denoised images, probabilities) are no
        # training material for a denoiser
        layers = [ly for ly in image_layers(self._viewer) if not (is_preview(ly) or is_output(ly))]
        self._watch_names(layers)
        names = [ly.name for ly in layers]
        if names == [self.item(i).text() for i in range(self.count())]:
            return
        checked = {ly.name for ly in self.layers()} & set(names)
        if not checked and names:
            active = self._viewer.layers.selection.active
            checked = {active.name if isinstance(active, Image) and active in layers else names[0]}
        self.blockSignals(True)
        self.clear()
        for name in names:
            item = QListWidgetItem(name, self)
            item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(
                Qt.CheckState.Checked if name in checked else Qt.CheckState.Unchecked
            )
        self.blockSignals(False)
        self.layers_changed.emit()

    def layers(self) -> list[Image]:
        chosen = {
            self.item(i).text()
            for i in range(self.count())
            if self.item(i).checkState() == Qt.CheckState.Checked
        }
        return [ly for ly in image_layers(self._viewer) if ly.name in chosen]

    def select(self, names) -> None:
        """Tick exactly ``names`` (one name or several)."""
        names = {names} if isinstance(names, str) else set(names)
        self.blockSignals(True)
        for i in range(self.count()):
            item = self.item(i)
            item.setCheckState(
                Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked
            )
        self.blockSignals(False)
        self.layers_changed.emit()


# --------------------------------------------------------------------------- form fields
def row_widget(*items: QWidget | tuple[QWidget, int]) -> QWidget:
    """Widgets side by side in one form row; ``(widget, 1)`` takes the spare width."""
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for item in items:
        widget, stretch = item if isinstance(item, tuple) else (item, 0)
        layout.addWidget(widget, stretch)
    return row


def spin_box(lo: int, hi: int, value: int, *, step: int = 1, tip: str = "") -> QSpinBox:
    """An integer box from ``lo`` to ``hi`` set to ``value``."""
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    if tip:
        box.setToolTip(tip)
    return box


def combo_box(items: list[str]) -> QComboBox:
    box = QComboBox()
    box.addItems(items)
    return box


# --------------------------------------------------------------------------- devices
class DeviceCombo(QComboBox):
    """``auto`` (saying what it resolves to here) and the devices that exist."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        present = set(available_devices())
        for name in DEVICE_CHOICES:
            label = name
            if name == "auto":
                label = f"auto: {describe_device(resolve_device('auto'))}"
            elif name not in present:
                label = f"{name} (not available)"
            self.addItem(label, name)
            if name != "auto" and name not in present:
                item = self.model().item(self.count() - 1)
                item.setEnabled(False)
                item.setToolTip(f"no {name} device on this machine")
        self.setToolTip("Where the network runs; auto picks CUDA, then Apple MPS, then the CPU")

    def device(self) -> str:
        return self.currentData(Qt.ItemDataRole.UserRole)


# --------------------------------------------------------------------------- file dialogs
def ask_save_model_path(parent: QWidget, suggested: str) -> Path | None:
    path, _ = QFileDialog.getSaveFileName(parent, "Save model", suggested, MODEL_FILTER)
    if not path:
        return None
    path = Path(path)
    return path if path.suffix else path.with_suffix(MODEL_SUFFIX)


def ask_and_save_model(parent: QWidget, model, missing: str) -> None:
    """Ask where to save ``model`` and save it; ``missing`` is shown when there is none."""
    if model is None:
        show_error(missing)
        return
    path = ask_save_model_path(parent, f"{model.name}{MODEL_SUFFIX}")
    if path is None:
        return
    try:
        model.save(path)
    except AesegError as exc:
        report_failure(exc, "Saving the model")
        return
    show_info(f"Saved model '{model.name}' to {path}")


def ask_open_model_path(parent: QWidget) -> Path | None:
    path, _ = QFileDialog.getOpenFileName(parent, "Load model", "", MODEL_FILTER)
    return Path(path) if path else None


def ask_and_load_denoiser(parent: QWidget):
    """Ask for a model file and load it as a denoiser; ``None`` when cancelled or unreadable
    (the reason is shown as a notification)."""
    from ..core.denoiser import DenoiserModel

    path = ask_open_model_path(parent)
    if path is None:
        return None
    try:
        model = DenoiserModel.load(path)
    except AesegError as exc:
        report_failure(exc, "Loading the model")
        return None
    from .session import SESSION

    same = SESSION.find_same(model)
    if same is not None:  # the same file again: use the model already loaded
        show_info(f"'{Path(path).name}' is loaded already, as '{same}'.")
        return SESSION.get(same)
    return model
