"""The *Train denoiser* dock widget: GUI -> :class:`DenoiserConfig` -> :class:`DenoiserTrainer`.

Training runs in a napari thread worker over :meth:`DenoiserTrainer.run`; every so often the
worker also denoises a small crop of the first image with the best weights so far, and the
widget shows it as a ``"<image> preview"`` layer. The finished (or stopped) model goes to
the session registry, where the *Denoise* widget finds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QWidget,
)
from superqt import QCollapsible

from ..core.data import check_axes_match
from ..core.denoiser import DenoiserModel
from ..core.devices import describe_device, resolve_device
from ..core.errors import AesegError, InvalidInputError
from ..core.image_io import in_integer_type
from ..core.training import (
    DEFAULT_BATCH_2D,
    DEFAULT_BATCH_3D,
    DenoiserTrainer,
    TrainingProgress,
    make_denoiser_config,
)
from ._common import (
    PREVIEW_METADATA,
    DeviceCombo,
    Failure,
    ImageLayerList,
    StopsWhenUndocked,
    WorkerJob,
    WrappedLabel,
    add_output,
    ask_and_load_denoiser,
    ask_and_save_model,
    bring_into_view,
    combo_box,
    format_seconds,
    guess_layer_axes,
    layer_data,
    output_layer,
    report_failure,
    row_widget,
    scrolling_layout,
    shifted_metadata,
    spatial_metadata,
    spin_box,
    start_job,
)
from .loss_plot import LossPlot
from .session import SESSION

MODES = {
    "n2v2": "n2v2: Noise2Void 2 (self-supervised, default)",
    "n2v": "n2v: Noise2Void",
    "dae": "dae: denoising autoencoder (adds synthetic noise)",
}
NOISE_DEFAULTS = {
    "gaussian": (0.1, 0.001, 1.0),
    "poisson": (30.0, 0.1, 1e5),
    "salt_pepper": (0.01, 0.001, 1.0),
}
PREVIEW_PLANE = 256
PREVIEW_PLANE_3D = 128
#: a run expected to last longer than this (seconds) gets a hint in the status
LONG_RUN_S = 3600
PREVIEW_DEPTH = 32


# --------------------------------------------------------------------------- worker side
@dataclass(frozen=True)
class Ready:
    """The trainer is built; training starts now. ``preview``: the input crop, read."""

    device: str
    preview: np.ndarray | None = None


@dataclass(frozen=True)
class Preview:
    step: int
    image: np.ndarray


@dataclass(frozen=True)
class Trained:
    model: DenoiserModel


@dataclass(frozen=True)
class PreviewRegion:
    """A small crop of an input image to denoise now and then, and where it sits."""

    image: Any  # numpy, or lazy (dask, zarr) until the worker reads it
    axes: str
    layer_name: str
    metadata: dict
    display: dict


class TrainingJob(WorkerJob):
    """The Train widget's job: its worker trains (and continues) one denoiser."""

    trainer: DenoiserTrainer | None

    def steps(
        self,
        *,
        images=(),
        config=None,
        device: str = "auto",
        name: str = "denoiser",
        model: DenoiserModel | None = None,
        more_steps: int = 0,
        preview: PreviewRegion | None = None,
        preview_every: int = 0,
    ):
        """The worker's generator: yields Ready/TrainingProgress/Preview, returns Trained.

        It never raises: errors are returned as :class:`Failure` so the widget can show the
        engine's message instead of a traceback.
        """
        try:
            # lazy (dask, zarr) data is read here, in the worker
            crop = None if preview is None else np.asarray(preview.image)
            if self.trainer is None:
                arrays = [np.asarray(im) for im in images]
                self.trainer = DenoiserTrainer(
                    arrays, config, device=device, model=model, name=name
                )
                yield Ready(describe_device(self.trainer.device), crop)
            trainer = self.trainer
            if more_steps and trainer.step >= trainer.total_steps:
                trainer.extend(more_steps)
            run = trainer.run()
            while True:
                if self.stop_requested.is_set():
                    trainer.stop()
                try:
                    progress = next(run)
                except StopIteration as done:
                    return Trained(done.value)
                yield progress
                if (
                    preview is not None
                    and progress.step % preview_every == 0
                    and not self.stop_requested.is_set()
                ):
                    best = trainer.result()
                    out = best.denoise(crop, axes=preview.axes, device=trainer.device)
                    yield Preview(progress.step, out)
        except Exception as exc:  # noqa: BLE001 - handed to the widget, which reports it
            return Failure(exc)
        finally:
            self.idle.set()


def preview_region(layer: Image, data, axes: str, viewer) -> PreviewRegion:
    """A centre crop (256x256; 32x128x128 in 3D) of the slice the viewer shows.

    The crop stays lazy for lazy data: the worker reads it.
    """
    shape = tuple(data.shape)
    spatial = "ZYX" if "Z" in axes else "YX"
    plane = PREVIEW_PLANE_3D if "Z" in axes else PREVIEW_PLANE
    try:
        point = np.asarray(layer.world_to_data(viewer.dims.point), float)
    except (ValueError, IndexError, TypeError):
        point = np.asarray(shape, float) / 2
    slices, offset = [], []
    for i, axis in enumerate(axes):
        n = shape[i]
        if axis in spatial:
            size = min(n, PREVIEW_DEPTH if axis == "Z" else plane)
            centre = n // 2 if axis != "Z" or i >= len(point) else int(round(point[i]))
            start = int(np.clip(centre - size // 2, 0, n - size))
            slices.append(slice(start, start + size))
        elif axis == "C":
            start = 0
            slices.append(slice(None))
        else:
            start = int(np.clip(round(point[i]) if i < len(point) else 0, 0, n - 1))
            slices.append(slice(start, start + 1))
        offset.append(start)
    crop = data[tuple(slices)]
    meta = shifted_metadata(spatial_metadata(layer), offset[: layer.ndim])
    display = {
        "rgb": layer.rgb,
        "colormap": None if layer.rgb else layer.colormap,
        "contrast_limits": tuple(layer.contrast_limits),
        "dtype": np.dtype(layer.dtype) if hasattr(layer, "dtype") else crop.dtype,
    }
    return PreviewRegion(crop, axes, layer.name, meta, display)


def as_display(image: np.ndarray, display: dict) -> np.ndarray:
    """RGB results go back to the input's integer type so they display like the input."""
    return in_integer_type(image, display["dtype"]) if display["rgb"] else image


def show_result_layer(viewer, name: str, image: np.ndarray, metadata: dict, display: dict):
    """Update the image layer called ``name`` in place, or add it once."""
    image = as_display(image, display)
    existing = output_layer(viewer, name)
    if (
        isinstance(existing, Image)
        and existing.rgb == display["rgb"]
        and existing.ndim == (image.ndim - int(display["rgb"]))
    ):
        # each property set re-slices the layer: set only what changed
        if not np.allclose(existing.scale, metadata["scale"]):
            existing.scale = metadata["scale"]
        if not np.allclose(existing.translate, metadata["translate"]):
            existing.translate = metadata["translate"]
        for key in ("units", "axis_labels"):
            if key in metadata and tuple(map(str, getattr(existing, key))) != metadata[key]:
                try:
                    setattr(existing, key, metadata[key])
                except (ValueError, TypeError):
                    pass
        existing.data = image
        return existing
    kwargs = {k: v for k, v in metadata.items() if k not in ("units", "axis_labels")}
    extra = {k: metadata[k] for k in ("units", "axis_labels") if k in metadata}
    index = None
    if existing is not None:  # ours, but no longer fits: replace it where it was
        index = viewer.layers.index(existing)
        viewer.layers.remove(existing)
    layer = Image(
        image,
        name=name,
        rgb=display["rgb"],
        contrast_limits=display["contrast_limits"],
        **({"colormap": display["colormap"]} if display["colormap"] is not None else {}),
        **kwargs,
    )
    # before the layer joins the viewer: units unlike the image's make napari warn
    for key, value in extra.items():
        try:
            setattr(layer, key, value)
        except (ValueError, TypeError):
            pass  # e.g. units napari does not know: the overlay does not depend on them
    add_output(viewer, layer, name, index)
    return layer


# --------------------------------------------------------------------------- the widget
class _JobHolder:
    """Lets the cleanup on widget destruction reach the job without holding the widget."""

    job: TrainingJob | None = None

    def shutdown(self, wait_s: float = 3.0) -> None:
        if self.job is not None:
            self.job.shutdown(wait_s)


class TrainDenoiserWidget(StopsWhenUndocked, QWidget):
    """Train a denoiser on image layers, watch the loss and a preview, save the model."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._holder = _JobHolder()
        self._worker = None
        self._running = False
        self._model: DenoiserModel | None = None
        self._loaded_model: DenoiserModel | None = None
        self._registered_name: str | None = None
        self._latest: TrainingProgress | None = None
        self._preview_source: str | None = None
        self._preview_region: PreviewRegion | None = None
        self._auto_axes = ""
        self._build()
        self._ui_timer = QTimer(self)
        self._ui_timer.setInterval(200)
        self._ui_timer.timeout.connect(self._flush_progress)
        self._ui_timer.start()
        holder = self._holder
        self.destroyed.connect(lambda *_: holder.shutdown())
        self._on_layers_changed()
        self._update_buttons()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        outer = scrolling_layout(self)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        outer.addLayout(form)

        self.layer_list = ImageLayerList(self.viewer, self)
        self.layer_list.layers_changed.connect(self._on_layers_changed)
        form.addRow("Images", self.layer_list)

        self.axes_edit = QLineEdit()
        self.axes_edit.setToolTip(
            "Axes of the images, e.g. YX, ZYX, TYX, YXC (S sample, T time, C channel). "
            "Guessed from the layer; Z makes the model 3D."
        )
        self.axes_edit.textEdited.connect(self._on_axes_edited)
        form.addRow("Axes", self.axes_edit)

        self.mode_combo = QComboBox()
        for key, label in MODES.items():
            self.mode_combo.addItem(label, key)
        self.mode_combo.currentIndexChanged.connect(self._on_mode_changed)
        form.addRow("Mode", self.mode_combo)

        self.noise_kind = QComboBox()
        self.noise_kind.addItems(list(NOISE_DEFAULTS))
        self.noise_level = QDoubleSpinBox()
        self.noise_level.setDecimals(3)
        self.noise_kind.currentTextChanged.connect(self._on_noise_kind)
        self.noise_kind.setToolTip("Synthetic noise added to the patches in dae mode")
        self.noise_level.setToolTip(
            "gaussian: sigma as a fraction of the intensity range; poisson: photons at the top "
            "of the range (lower is noisier); salt_pepper: fraction of pixels"
        )
        noise_row = row_widget((self.noise_kind, 1), (self.noise_level, 1))
        self.noise_label = QLabel("Noise")
        self.noise_row = noise_row
        form.addRow(self.noise_label, noise_row)
        self._on_noise_kind(self.noise_kind.currentText())

        self.patch_size = spin_box(
            8,
            4096,
            64,
            step=8,
            tip="In-plane patch size (pixels). Below 32 the network only works on inputs as "
            "small as its patches, so it denoises in tiles of the patch size: faster to "
            "train, several times slower to apply",
        )
        self.patch_size_z = spin_box(
            4,
            1024,
            16,
            step=4,
            tip="Patch depth along Z (3D only). Below 16 the network only works on inputs "
            "as thin as its patches, so it denoises in tiles of that depth (slower)",
        )
        self.patch_z_label = QLabel("depth")
        patch_row = row_widget((self.patch_size, 1), self.patch_z_label, (self.patch_size_z, 1))
        form.addRow("Patch size", patch_row)
        self.batch_size = spin_box(
            1,
            4096,
            DEFAULT_BATCH_2D,
            tip=f"Patches per training step ({DEFAULT_BATCH_2D}; {DEFAULT_BATCH_3D} for 3D)",
        )
        form.addRow("Batch size", self.batch_size)
        self.steps = spin_box(1, 10_000_000, 2000, step=100, tip="Optimisation steps")
        form.addRow("Steps", self.steps)
        self.learning_rate = QDoubleSpinBox()
        self.learning_rate.setDecimals(5)
        self.learning_rate.setRange(1e-5, 1.0)
        self.learning_rate.setSingleStep(1e-4)
        self.learning_rate.setValue(4e-4)
        form.addRow("Learning rate", self.learning_rate)
        self.device_combo = DeviceCombo()
        form.addRow("Device", self.device_combo)

        self.preview_check = QCheckBox("every")
        self.preview_check.setChecked(True)
        self.preview_every = spin_box(0, 10_000_000, 0, step=10)
        self.preview_every.setSpecialValueText("auto")
        self.preview_every.setSuffix(" steps")
        self.preview_every.setToolTip(
            "Denoise a centre crop of the shown slice with the best weights so far every this "
            "many steps (auto: every 10% of the steps, at most 100)"
        )
        preview_row = row_widget(self.preview_check, (self.preview_every, 1))
        form.addRow("Preview", preview_row)

        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("<image>-<mode>")
        self.name_edit.setToolTip("The name the model gets in this session and in its file")
        form.addRow("Model name", self.name_edit)

        self.advanced = QCollapsible("Advanced", expandedIcon="▼", collapsedIcon="▶")
        adv = QWidget()
        adv_form = QFormLayout(adv)
        adv_form.setContentsMargins(0, 0, 0, 0)
        self.depth = spin_box(
            1, 5, 2, tip="Levels of the encoder (the patch size must divide 2**depth)"
        )
        self.base_channels = spin_box(4, 256, 32, step=4, tip="Feature maps at full resolution")
        self.optimizer = combo_box(["adam", "adamw", "sgd", "rmsprop"])
        self.loss = combo_box(["mse", "l1"])
        self.scheduler = combo_box(["cosine", "plateau", "constant"])
        self.val_fraction = QDoubleSpinBox()
        self.val_fraction.setRange(0.0, 0.5)
        self.val_fraction.setSingleStep(0.05)
        self.val_fraction.setValue(0.1)
        self.val_fraction.setToolTip("Part of the data held out to pick the best weights")
        self.seed = spin_box(
            0, 2**31 - 1, 0, tip="Random seed (same seed, same result on one device)"
        )
        for label, w in (
            ("Depth", self.depth),
            ("Base channels", self.base_channels),
            ("Optimizer", self.optimizer),
            ("Loss", self.loss),
            ("Scheduler", self.scheduler),
            ("Validation fraction", self.val_fraction),
            ("Seed", self.seed),
        ):
            adv_form.addRow(label, w)
        self.advanced.addWidget(adv)
        outer.addWidget(self.advanced)

        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("Train a new model from scratch with these settings")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop after the current step; the best model so far is kept")
        self.continue_button = QPushButton("Continue")
        self.continue_button.setToolTip(
            "Train further with the same optimiser state (a finished run gets 'Steps' more)"
        )
        self.start_button.clicked.connect(lambda: self.start())
        self.stop_button.clicked.connect(self.stop)
        self.continue_button.clicked.connect(lambda: self.resume())
        for b in (self.start_button, self.stop_button, self.continue_button):
            buttons.addWidget(b)
        outer.addLayout(buttons)

        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m steps")
        self.progress.setMaximum(self.steps.value())
        self.progress.setValue(0)
        # before the first run the bar shows the steps the form asks for
        self.steps.valueChanged.connect(
            lambda value: (
                None
                if self._running or self.progress.value()
                else self.progress.setMaximum(max(1, value))
            )
        )
        outer.addWidget(self.progress)
        self.status = WrappedLabel("Choose images and press Start.")
        outer.addWidget(self.status)
        self.loss_plot = LossPlot(self)
        outer.addWidget(self.loss_plot, 1)

        files = QHBoxLayout()
        self.save_button = QPushButton("Save model...")
        self.load_button = QPushButton("Load model...")
        self.save_button.clicked.connect(self.save_model)
        self.load_button.clicked.connect(self.load_model)
        files.addWidget(self.save_button)
        files.addWidget(self.load_button)
        outer.addLayout(files)
        self.model_info = WrappedLabel("")
        outer.addWidget(self.model_info)
        self._on_mode_changed()

    # ------------------------------------------------------------------ reactions
    def _on_layers_changed(self) -> None:
        layers = self.layer_list.layers()
        guess = guess_layer_axes(layers[0]) if layers else ""
        if self.axes_edit.text() in ("", self._auto_axes):
            self.axes_edit.setText(guess)
        self._auto_axes = guess
        self._on_axes_edited()

    def _on_axes_edited(self, *_) -> None:
        is_3d = "Z" in self.axes_edit.text().upper()
        self.patch_size_z.setEnabled(is_3d)
        self.patch_z_label.setEnabled(is_3d)
        # the default batch follows the dimensionality when it changes, unless the user
        # changed the batch
        if is_3d != getattr(self, "_was_3d", False):
            default, other = (DEFAULT_BATCH_3D, DEFAULT_BATCH_2D)[:: 1 if is_3d else -1]
            if self.batch_size.value() == other:
                self.batch_size.setValue(default)
        self._was_3d = is_3d

    def _on_mode_changed(self, *_) -> None:
        dae = self.mode_combo.currentData() == "dae"
        self.noise_label.setVisible(dae)
        self.noise_row.setVisible(dae)

    def _on_noise_kind(self, kind: str) -> None:
        value, lo, hi = NOISE_DEFAULTS[kind]
        self.noise_level.setRange(lo, hi)
        self.noise_level.setSingleStep(value / 2)
        self.noise_level.setValue(value)

    def _update_buttons(self) -> None:
        job = self._holder.job
        can_continue = (job is not None and job.trainer is not None) or (
            self._loaded_model is not None
        )
        self.start_button.setEnabled(not self._running)
        self.stop_button.setEnabled(self._running)
        self.continue_button.setEnabled(not self._running and can_continue)
        self.save_button.setEnabled(self._model is not None and not self._running)
        self.load_button.setEnabled(not self._running)

    # ------------------------------------------------------------------ config
    def config_options(self) -> dict:
        """The GUI's settings as keyword arguments of :func:`make_denoiser_config`."""
        mode = self.mode_combo.currentData()
        opts = {
            "mode": mode,
            "axes": self.axes_edit.text().strip().upper() or None,
            "steps": self.steps.value(),
            "patch_size": self.patch_size.value(),
            "patch_size_z": self.patch_size_z.value(),
            "batch_size": self.batch_size.value(),
            "learning_rate": self.learning_rate.value(),
            "depth": self.depth.value(),
            "base_channels": self.base_channels.value(),
            "seed": self.seed.value(),
            "optimizer": self.optimizer.currentText(),
            "loss": self.loss.currentText(),
            "scheduler": self.scheduler.currentText(),
            "val_fraction": self.val_fraction.value(),
        }
        if mode == "dae":
            opts["noise"] = [f"{self.noise_kind.currentText()}:{self.noise_level.value():g}"]
        return opts

    def set_options(self, **options) -> None:
        """Set GUI fields by the names of :meth:`config_options` (for scripts and tests)."""
        spins = {
            "steps": self.steps,
            "patch_size": self.patch_size,
            "patch_size_z": self.patch_size_z,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "depth": self.depth,
            "base_channels": self.base_channels,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "preview_every": self.preview_every,
        }
        combos = {"optimizer": self.optimizer, "loss": self.loss, "scheduler": self.scheduler}
        for key, value in options.items():
            if key in spins:
                spins[key].setValue(value)
            elif key in combos:
                combos[key].setCurrentText(value)
            elif key == "mode":
                self.mode_combo.setCurrentIndex(self.mode_combo.findData(value))
            elif key == "axes":
                self.axes_edit.setText(value)
                self._on_axes_edited()
            elif key == "noise":
                kind, _, level = value.partition(":")
                self.noise_kind.setCurrentText(kind)
                if level:
                    self.noise_level.setValue(float(level))
            elif key == "name":
                self.name_edit.setText(value)
            elif key == "preview":
                self.preview_check.setChecked(bool(value))
            elif key == "device":
                self.device_combo.setCurrentIndex(self.device_combo.findData(value))
            else:
                raise KeyError(f"unknown option '{key}'")

    def _preview_interval(self, total_steps: int) -> int:
        every = self.preview_every.value()
        return every if every > 0 else max(1, min(100, total_steps // 10))

    def _preview_for(self, layer: Image | None, axes: str) -> PreviewRegion | None:
        if layer is None or not self.preview_check.isChecked():
            return None
        data = layer_data(layer)
        try:
            check_axes_match(tuple(data.shape), axes)
        except InvalidInputError:
            return None
        return preview_region(layer, data, axes, self.viewer)

    # ------------------------------------------------------------------ actions
    @property
    def running(self) -> bool:
        return self._running

    @property
    def trainer(self) -> DenoiserTrainer | None:
        job = self._holder.job
        return job.trainer if job is not None else None

    @property
    def model(self) -> DenoiserModel | None:
        """The latest model trained (or loaded) here."""
        return self._model

    def start(self, *, sync: bool = False) -> None:
        """Train a new model on the selected layers with the settings shown."""
        if self._running:
            return
        layers = self.layer_list.layers()
        if not layers:
            self.status.setText("Not started: no image layer is ticked.")
            show_error("Choose at least one image layer to train on.")
            return
        datas = [layer_data(ly) for ly in layers]
        options = self.config_options()
        try:
            config = make_denoiser_config(tuple(datas[0].shape), **options)
            for ly, d in zip(layers[1:], datas[1:], strict=True):
                try:
                    check_axes_match(tuple(d.shape), config.axes)
                except InvalidInputError as exc:
                    raise InvalidInputError(f"layer '{ly.name}': {exc}") from None
            device = self.device_combo.device()
            resolve_device(device)
        except AesegError as exc:
            self.status.setText(f"Not started: {str(exc).splitlines()[0]}")
            report_failure(exc, "Training")
            return
        name = self.name_edit.text().strip() or f"{layers[0].name}-{config.mode}"
        self._preview_source = layers[0].name
        preview = self._preview_region = self._preview_for(layers[0], config.axes)
        job = TrainingJob()
        self._holder.job = job
        self._loaded_model = None
        self._registered_name = None
        self.loss_plot.clear()
        self._run(
            job,
            job.steps(
                images=datas,
                config=config,
                device=device,
                name=name,
                preview=preview,
                preview_every=self._preview_interval(config.training.steps),
            ),
            total=config.training.steps,
            sync=sync,
        )

    def resume(self, *, sync: bool = False) -> None:
        """Continue: the same trainer (optimiser state kept), or a loaded model's training."""
        if self._running:
            return
        job = self._holder.job
        more = self.steps.value()
        if job is not None and job.trainer is not None:
            trainer = job.trainer
            axes = trainer.config.axes
            source = self._preview_source
            layer = self.viewer.layers[source] if source in self.viewer.layers else None
            total = (
                trainer.total_steps if trainer.step < trainer.total_steps else trainer.step + more
            )
            preview = self._preview_region = self._preview_for(
                layer if isinstance(layer, Image) else None, axes
            )
            gen = job.steps(
                more_steps=more,
                preview=preview,
                preview_every=self._preview_interval(total - trainer.step),
            )
        elif self._loaded_model is not None:
            model = self._loaded_model
            layers = self.layer_list.layers()
            if not layers:
                self.status.setText("Not continued: no image layer is ticked.")
                show_error("Choose the image layer(s) to continue training on.")
                return
            job = TrainingJob()
            self._holder.job = job
            self._registered_name = model.name
            self._preview_source = layers[0].name
            total = model.trained_steps + more
            preview = self._preview_region = self._preview_for(layers[0], model.config.axes)
            gen = job.steps(
                images=[layer_data(ly) for ly in layers],
                device=self.device_combo.device(),
                model=model,
                more_steps=more,
                preview=preview,
                preview_every=self._preview_interval(more),
            )
            self.loss_plot.set_history(model.history)
        else:
            self.status.setText("Not continued: no model to continue.")
            show_error("Nothing to continue: start a training or load a model first.")
            return
        self._run(job, gen, total=total, sync=sync)

    def stop(self) -> None:
        """Stop after the current step; the best model so far is kept and registered."""
        job = self._holder.job
        if job is not None:
            job.stop()
            self.status.setText("Stopping...")

    def _run(self, job: TrainingJob, gen, *, total: int, sync: bool) -> None:
        region = self._preview_region
        if region is not None:  # a preview hidden when the last run ended shows again
            previous = output_layer(self.viewer, f"{region.layer_name} preview")
            if previous is not None:
                previous.visible = True
        self._running = True
        job.stop_requested.clear()
        job.idle.clear()
        self.progress.setMaximum(max(1, total))
        self.loss_plot.set_planned_steps(total)
        self._latest = None
        self.status.setText("Preparing the training data...")
        self._update_buttons()
        bring_into_view(self.status)
        self._worker = start_job(
            gen,
            on_yield=self._on_yield,
            on_return=self._on_return,
            on_exit=job.idle.set,
            sync=sync,
        )

    # ------------------------------------------------------------------ worker events
    def _on_yield(self, item) -> None:
        if isinstance(item, TrainingProgress):
            self._latest = item
            self.loss_plot.add_point(item.step, item.train_loss, item.val_loss)
        elif isinstance(item, Preview):
            self._show_preview(item)
        elif isinstance(item, Ready):
            self.status.setText(f"Training on {item.device}...")
            self._create_preview_layer(item.preview)

    def _create_preview_layer(self, crop: np.ndarray | None) -> None:
        """Add the preview layer now, showing the input crop itself (so nothing changes on
        screen): adding a layer stalls the main thread far longer than updating one, and
        this way that happens when the user presses Start, not in the middle of training."""
        region = self._preview_region
        if region is None or crop is None:
            return
        if output_layer(self.viewer, f"{region.layer_name} preview") is not None:
            return
        show_result_layer(
            self.viewer,
            f"{region.layer_name} preview",
            crop.astype(np.float32),
            {**region.metadata, "metadata": dict(PREVIEW_METADATA)},
            region.display,
        )

    def _show_preview(self, item: Preview) -> None:
        region = self._preview_region
        if region is None:
            return
        show_result_layer(
            self.viewer, f"{region.layer_name} preview", item.image, region.metadata, region.display
        )

    def _hide_preview(self) -> bool:
        """Hide the preview once training ends: it covers the image and every result laid
        over it (the Segment widget's labels). True if there was one to hide."""
        region = self._preview_region
        layer = (
            None if region is None else output_layer(self.viewer, f"{region.layer_name} preview")
        )
        if layer is None or not layer.visible:
            return False
        layer.visible = False
        return True

    def _flush_progress(self) -> None:
        p = self._latest
        if p is None or not self._running:
            return
        self.progress.setMaximum(max(1, p.total_steps))
        self.progress.setValue(p.step)
        self.loss_plot.set_planned_steps(p.total_steps)
        val = f" · best val {p.best_val_loss:.4g}" if p.best_val_loss is not None else ""
        slow = ""
        if p.step >= 5 and p.eta_seconds is not None and p.eta_seconds > LONG_RUN_S:
            slow = " · over an hour: a smaller patch or batch (or a GPU) is faster"
        self.status.setText(
            f"{p.steps_per_second:.1f} steps/s · ETA {format_seconds(p.eta_seconds)} · "
            f"loss {p.train_loss:.4g}{val}{slow}"
        )

    def _on_return(self, result) -> None:
        self._flush_progress()
        self._running = False
        self._worker = None
        try:
            hidden = self._hide_preview()
            if isinstance(result, Trained):
                self._register(result.model)
                if hidden:
                    self.status.setText(
                        f"{self.status.text()} Its preview is hidden (tick it to compare)."
                    )
            elif isinstance(result, Failure):
                job = self._holder.job
                started = job is not None and job.trainer is not None and job.trainer.step > 0
                before = "Training stopped" if started else "Not started"
                self.status.setText(f"{before}: {str(result.error).splitlines()[0]}")
                report_failure(result.error, "Training")
        finally:
            self._update_buttons()

    def _register(self, model: DenoiserModel) -> None:
        job = self._holder.job
        if self._registered_name is None:
            name = SESSION.add_model(model)
            self._registered_name = name
        else:
            model.name = self._registered_name
            SESSION.add_model(model, replace=True)
        if job is not None and job.trainer is not None:
            job.trainer.name = model.name
        self._model = model
        self.progress.setValue(model.trained_steps)
        self.status.setText(
            f"Model '{model.name}' trained for {model.trained_steps} steps; it is offered in the "
            "Denoise widget."
        )
        self.model_info.setText(model.describe())

    # ------------------------------------------------------------------ files
    def save_model(self) -> None:
        ask_and_save_model(
            self, self._model, "There is no model to save yet: train or load one first."
        )

    def load_model(self) -> None:
        model = ask_and_load_denoiser(self)
        if model is None:
            return
        SESSION.add_model(model)
        self._model = model
        self._loaded_model = model
        self._holder.job = None
        self.loss_plot.set_history(model.history)
        self.progress.setMaximum(max(1, model.trained_steps))
        self.progress.setValue(model.trained_steps)
        self.status.setText(
            f"Loaded '{model.name}'. Continue trains it further on the selected images."
        )
        self.model_info.setText(model.describe())
        self._update_buttons()

    def _on_undocked(self) -> None:
        self._holder.shutdown()
