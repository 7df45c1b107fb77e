"""A small live loss plot painted with QPainter (no plotting library needed).

Points are appended as training reports them; the widget repaints at most ``max_fps``
times a second, so a fast training loop never floods the main thread with redraws.
"""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

TRAIN_COLOR = QColor(90, 160, 255)
VAL_COLOR = QColor(255, 150, 60)


def _nice_step(span: float, target: int) -> float:
    raw = span / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values (shorter at the start), vectorised."""
    if window <= 1:
        return values
    csum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(0, idx - window)
    return (csum[idx] - csum[start]) / (idx - start)


def _log_ticks(y0: float, y1: float, mantissas) -> list[float]:
    """Values ``m * 10**e`` between ``10**y0`` and ``10**y1``, ascending."""
    ticks = []
    for e in range(math.floor(y0), math.ceil(y1) + 1):
        for m in mantissas:
            t = m * 10.0**e
            if y0 <= math.log10(t) <= y1:
                ticks.append(t)
    return ticks


def _y_ticks(y0: float, y1: float, height: float, min_gap: float) -> list[float]:
    """Log-axis ticks: 1..9, else 1-2-5, else powers of ten (every k-th decade), picking
    the densest of these whose neighbours are at least ``min_gap`` pixels apart."""
    per_decade = height / max(y1 - y0, 1e-9)  # pixels per factor of 10
    for mantissas in (range(1, 10), (1, 2, 5)):
        ticks = _log_ticks(y0, y1, mantissas)
        gaps = np.diff(np.log10(ticks)) * per_decade if len(ticks) > 1 else [np.inf]
        if len(ticks) >= 2 and min(gaps) >= min_gap:
            return ticks
    every = max(1, math.ceil(min_gap / per_decade))
    decades = [10.0**e for e in range(math.ceil(y0), math.floor(y1) + 1) if e % every == 0]
    if decades:
        return decades
    return _log_ticks(y0, y1, (1, 2, 5))[:1]


class LossPlot(QWidget):
    """Training loss (raw, faint, and smoothed) and validation loss against the step.

    The loss axis is logarithmic: losses fall by orders of magnitude early on.
    """

    def __init__(self, parent: QWidget | None = None, *, max_fps: float = 5.0):
        super().__init__(parent)
        self._train_steps: list[int] = []
        self._train: list[float] = []
        self._val_steps: list[int] = []
        self._val: list[float] = []
        self._dirty = False
        self._planned_steps = 0
        self._axis_range = (0.0, 0.0)  # log10 of the loss axis, as last drawn
        self.repaints = 0
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self._timer = QTimer(self)
        self._timer.setInterval(int(1000 / max_fps))
        self._timer.timeout.connect(self._flush)
        self._timer.start()

    # ------------------------------------------------------------------ data
    def add_point(self, step: int, train_loss: float, val_loss: float | None = None) -> None:
        if math.isfinite(train_loss):
            self._train_steps.append(step)
            self._train.append(train_loss)
        if val_loss is not None and math.isfinite(val_loss):
            self._val_steps.append(step)
            self._val.append(val_loss)
        self._dirty = True

    def set_planned_steps(self, steps: int) -> None:
        """Extend the step axis to the end of the run, so the curve fills it as it trains."""
        if int(steps) != self._planned_steps:
            self._planned_steps = int(steps)
            self._dirty = True

    def set_history(self, history) -> None:
        """Show a model's ``(step, train_loss, val_loss or NaN)`` rows."""
        self.clear()
        for step, train, val in history:
            self.add_point(int(step), float(train), None if math.isnan(val) else float(val))

    def clear(self) -> None:
        self._train_steps.clear()
        self._train.clear()
        self._val_steps.clear()
        self._val.clear()
        self._dirty = True

    @property
    def train_points(self) -> list[tuple[int, float]]:
        return list(zip(self._train_steps, self._train, strict=True))

    @property
    def val_points(self) -> list[tuple[int, float]]:
        return list(zip(self._val_steps, self._val, strict=True))

    def _flush(self) -> None:
        if self._dirty:
            self._dirty = False
            self.update()

    # ------------------------------------------------------------------ paint
    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.repaints += 1
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fg = self.palette().color(self.foregroundRole())
        fm = self.fontMetrics()
        left, right = fm.horizontalAdvance("0.0001") + 10, fm.horizontalAdvance("00000") // 2 + 4
        top, bottom = fm.height() + 8, fm.height() + 10
        plot = QRectF(left, top, self.width() - left - right, self.height() - top - bottom)
        if plot.width() < 20 or plot.height() < 20:
            return
        faint = QColor(fg)
        faint.setAlpha(60)
        p.setPen(QPen(faint, 1))
        p.drawRect(plot)
        if not self._train:
            p.setPen(fg)
            p.drawText(plot, Qt.AlignmentFlag.AlignCenter, "loss appears here during training")
            return

        steps = np.asarray(self._train_steps, float)
        train = np.asarray(self._train, float)
        smooth = _running_mean(train, max(1, len(train) // 40))
        val_steps = np.asarray(self._val_steps, float)
        val = np.asarray(self._val, float)
        x0, x1 = 0.0, max(float(steps[-1]), float(self._planned_steps), 1.0)
        shown = np.concatenate([train[len(train) // 20 :], val]) if len(train) > 20 else train
        positive = shown[shown > 0]
        if positive.size == 0:
            return
        # the bottom follows the smoothed curve (and validation), not one lucky batch: the
        # raw curve below it is clipped, so a single tiny loss does not squeeze the plot
        cut = len(train) // 20 if len(train) > 20 else 0
        settled = np.concatenate([smooth[cut:], val])
        settled = settled[settled > 0]
        low = min(float(np.percentile(positive, 2)), float(settled.min(initial=np.inf)))
        y0 = math.log10(low)
        y1 = math.log10(float(np.percentile(positive, 99.5)))
        if y1 - y0 < 1e-3:
            y0, y1 = y0 - 0.05, y1 + 0.05
        pad = 0.05 * (y1 - y0)
        y0, y1 = y0 - pad, y1 + pad
        self._axis_range = (y0, y1)

        def to_px(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
            ly = np.log10(np.clip(ys, 10**y0, 10**y1))
            px = plot.left() + (xs - x0) / (x1 - x0) * plot.width()
            py = plot.bottom() - (ly - y0) / (y1 - y0) * plot.height()
            return np.stack([px, py], axis=1)

        self._draw_axes(p, plot, fg, faint, x0, x1, y0, y1)
        p.setClipRect(plot)
        raw_color = QColor(TRAIN_COLOR)
        raw_color.setAlpha(70)
        self._polyline(p, to_px(steps, train), QPen(raw_color, 1))
        self._polyline(p, to_px(steps, smooth), QPen(TRAIN_COLOR, 2))
        if val.size:
            pts = to_px(val_steps, val)
            self._polyline(p, pts, QPen(VAL_COLOR, 2))
            p.setBrush(VAL_COLOR)
            p.setPen(Qt.PenStyle.NoPen)
            for x, y in pts[-200:]:
                p.drawEllipse(QPointF(x, y), 2.5, 2.5)
        p.setClipping(False)
        self._legend(p, plot, fg, len(val) > 0)
        p.end()

    @staticmethod
    def _polyline(p: QPainter, pts: np.ndarray, pen: QPen) -> None:
        if len(pts) > 2000:  # at most a few points per pixel column
            pts = pts[:: len(pts) // 1000]
        path = QPainterPath(QPointF(*pts[0]))
        for x, y in pts[1:]:
            path.lineTo(x, y)
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawPath(path)

    def _draw_axes(self, p, plot, fg, faint, x0, x1, y0, y1) -> None:
        fm = self.fontMetrics()
        # x: nice steps
        step = _nice_step(x1 - x0, max(2, int(plot.width() // 70)))
        x = math.ceil(x0 / step) * step
        while x <= x1 + 1e-9:
            px = plot.left() + (x - x0) / (x1 - x0) * plot.width()
            p.setPen(QPen(faint, 1))
            p.drawLine(QPointF(px, plot.top()), QPointF(px, plot.bottom()))
            p.setPen(fg)
            label = f"{x:g}"
            p.drawText(
                QPointF(px - fm.horizontalAdvance(label) / 2, plot.bottom() + fm.ascent() + 3),
                label,
            )
            x += step
        # y: the densest regular set of log ticks whose labels do not crowd
        for t in _y_ticks(y0, y1, plot.height(), 1.4 * fm.height()):
            py = plot.bottom() - (math.log10(t) - y0) / (y1 - y0) * plot.height()
            p.setPen(QPen(faint, 1))
            p.drawLine(QPointF(plot.left(), py), QPointF(plot.right(), py))
            p.setPen(fg)
            label = f"{t:.3g}"
            p.drawText(
                QPointF(plot.left() - fm.horizontalAdvance(label) - 4, py + fm.ascent() / 2 - 1),
                label,
            )

    def _legend(self, p: QPainter, plot: QRectF, fg: QColor, with_val: bool) -> None:
        fm = self.fontMetrics()
        y = plot.top() - 5
        x = plot.left()
        p.setPen(fg)
        title = "loss (log)"
        p.drawText(QPointF(x, y), title)
        x += fm.horizontalAdvance(title) + 14
        entries = [("train", TRAIN_COLOR)] + ([("validation", VAL_COLOR)] if with_val else [])
        for label, color in entries:
            p.setPen(QPen(color, 3))
            p.drawLine(QPointF(x, y - fm.ascent() / 3), QPointF(x + 14, y - fm.ascent() / 3))
            x += 18
            p.setPen(fg)
            p.drawText(QPointF(x, y), label)
            x += fm.horizontalAdvance(label) + 14
        p.setPen(fg)
        label = "step"
        p.drawText(QPointF(plot.right() - fm.horizontalAdvance(label), y), label)
