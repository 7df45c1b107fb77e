"""The models of this napari session, shared by all napari-aeseg widgets.

A model trained in a widget, loaded from a file, or dropped on the viewer (the ``.aeseg``
reader) is registered in :data:`SESSION` under its name; the widgets list the models of the
kind they use (denoisers, segmenters) and refresh when :attr:`ModelSession.changed` fires.
Nothing here imports Qt: :mod:`psygnal` signals work with or without a GUI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psygnal import Signal

if TYPE_CHECKING:  # torch is imported by the models, not by the registry
    from ..core.denoiser import TrainedModel


class ModelSession:
    """Models (denoisers and segmenters, any :class:`TrainedModel`) by name, in the order
    they were added.

    ``changed`` is emitted with the name of the model that was added, replaced or removed.
    """

    changed = Signal(str)

    def __init__(self) -> None:
        self._models: dict[str, TrainedModel] = {}

    def add_model(self, model: TrainedModel, *, replace: bool = False) -> str:
        """Register ``model`` and return the name it is known by.

        A different model with the same name is kept: the new one is renamed ``name-2``,
        ``name-3``... (and ``model.name`` updated) unless ``replace`` is true, which is how a
        widget swaps in a newer version of the model it trained.
        """
        name = model.name or type(model).__name__.removesuffix("Model").lower()
        existing = self._models.get(name)
        if existing is not None and existing is not model and not replace:
            n = 2
            while f"{name}-{n}" in self._models:
                n += 1
            name = f"{name}-{n}"
        model.name = name
        self._models[name] = model
        self.changed.emit(name)
        return name

    def find_same(self, model: TrainedModel) -> str | None:
        """The name of a registered model equal to ``model`` (same kind, config, steps and
        weights: the same file loaded again), or None."""
        for name, other in self._models.items():
            if other is model or _same_model(other, model):
                return name
        return None

    def get(self, name: str) -> TrainedModel:
        """The model registered as ``name``; ``KeyError`` lists the known names."""
        try:
            return self._models[name]
        except KeyError:
            known = ", ".join(self._models) or "none yet"
            raise KeyError(f"no model named '{name}' in this session (known: {known})") from None

    def names(self) -> list[str]:
        return list(self._models)

    def models(self) -> list[TrainedModel]:
        return list(self._models.values())

    def remove(self, name: str) -> None:
        if self._models.pop(name, None) is not None:
            self.changed.emit(name)

    def clear(self) -> None:
        for name in list(self._models):
            self.remove(name)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __len__(self) -> int:
        return len(self._models)


def _same_model(a: TrainedModel, b: TrainedModel) -> bool:
    if type(a) is not type(b) or a.trained_steps != b.trained_steps or a.config != b.config:
        return False
    import torch

    sa, sb = a.network.state_dict(), b.network.state_dict()
    # a model that ran on a GPU keeps its weights there: compare on the CPU
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[k].detach().cpu(), sb[k].detach().cpu()) for k in sa
    )


#: The registry of this Python process (one napari session).
SESSION = ModelSession()
