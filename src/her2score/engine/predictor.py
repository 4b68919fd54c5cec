"""One Predictor for training, evaluation and prediction: batching, normalisation, test-time
augmentation and maps, the same everywhere.

It pairs a model with its input kind and normalisation statistics. ``train`` uses it to validate and
test, ``evaluate`` and ``predict`` build it from a checkpoint (:meth:`Predictor.from_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from her2score.errors import Her2ScoreError


class NonFiniteError(Her2ScoreError):
    """A model produced non-finite probabilities."""


def resolve_device(name: str = "auto") -> Any:
    """``auto``: CUDA when available, else CPU; otherwise the named torch device."""
    import torch

    from her2score.errors import ConfigError

    # Tiny activations (denormal floats) make CPU kernels many times slower; they carry no signal.
    torch.set_flush_denormal(True)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for, but CUDA is not available on this machine")
    return device


class Predictor:
    """Class probabilities (and maps) of a model over prepared inputs of its kind."""

    def __init__(
        self,
        model: Any,
        kind: Any,
        stats: dict[str, Any],
        device: Any,
        tta: bool = True,
        batch_size: int = 16,
        num_classes: int = 0,
    ) -> None:
        self.model, self.kind, self.stats = model, kind, stats
        self.device, self.tta, self.batch_size = device, tta, batch_size
        self.num_classes = num_classes  # the width of an empty result

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", backend: str = "torch"
    ) -> tuple[Predictor, dict[str, Any]]:
        """A predictor for a saved ``model.safetensors`` (``backend="torch"``) or an ONNX file exported
        by ``her2score export`` (``backend="onnxruntime"``), and the model's metadata."""
        from her2score.data.inputs import create_input_kind
        from her2score.engine.checkpoint import load_model
        from her2score.errors import ConfigError

        if backend == "onnxruntime":
            from her2score.export.onnx import OnnxModel

            dev = resolve_device("cpu")
            model: Any = OnnxModel(path)
            meta = model.meta
        elif backend == "torch":
            dev = resolve_device(device)
            model, meta = load_model(path, dev)
        else:
            raise ConfigError(f"unknown backend {backend!r} (torch or onnxruntime)")
        kind = create_input_kind(meta["input_kind"], **meta["data"])
        tta = bool(meta.get("tta", False))
        return cls(model, kind, meta["stats"], dev, tta=tta, num_classes=len(meta["classes"])), meta

    def predict(self, prepared: Any, index: np.ndarray | None = None) -> np.ndarray:
        """Probabilities (N, K) for rows ``index`` of ``prepared`` (all by default), without gradients.

        With ``tta`` the probabilities are averaged over the kind's views (flips and rotations of an
        image: a slide has no canonical orientation). Rows whose probabilities are not finite raise
        :class:`NonFiniteError` naming how many.
        """
        import torch

        index = np.arange(len(prepared)) if index is None else np.asarray(index)
        self.model.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(index), self.batch_size):
                idx = index[start : start + self.batch_size]
                batch = self.kind.batch(prepared, idx, self.stats, self.device, inference=True)
                views = self.kind.views(batch) if self.tta else [batch]
                probs = sum(self.model.predict_step(v) for v in views) / len(views)
                out.append(probs.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        probs = np.concatenate(out)
        bad = ~np.isfinite(probs).all(axis=1)
        if bad.any():
            raise NonFiniteError(f"the model gave non-finite probabilities for {int(bad.sum())} input(s)")
        return probs

    def predict_baselines(self, prepared: Any) -> dict[str, np.ndarray]:
        """Probabilities of the simpler models inside this one (``SlideModel.baselines``), by name."""
        import torch

        out: dict[str, list[np.ndarray]] = {}
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(prepared), self.batch_size):
                idx = np.arange(start, min(start + self.batch_size, len(prepared)))
                batch = self.kind.batch(prepared, idx, self.stats, self.device, inference=True)
                for name, probs in self.model.baselines(batch).items():
                    out.setdefault(name, []).append(probs.float().cpu().numpy())
        return {name: np.concatenate(parts) for name, parts in out.items()}

    def explain(self, prepared: Any, i: int) -> tuple[np.ndarray, int] | None:
        """The model's map for item ``i`` (Grad-CAM, attention) and the class it explains, if any."""
        batch = self.kind.batch(prepared, np.array([i]), self.stats, self.device, inference=True)
        return self.model.explain(batch)

    def heatmaps(
        self,
        prepared: Any,
        names: list[str],
        out_dir: str | Path,
        limit: int | None = None,
        classes: Any = None,
    ) -> list[tuple[str, Path]]:
        """Overlays (picture | map) for the first ``limit`` items that have a picture and a map;
        ``(caption, path)`` pairs. File names stay unique when two inputs share a stem."""
        from her2score.io import unique_stems
        from her2score.report.heatmap import save_map_overlay

        figures: list[tuple[str, Path]] = []
        stems = unique_stems(names)
        for i, name in enumerate(names[:limit] if limit else names):
            picture = self.kind.picture(prepared, i)
            explained = self.explain(prepared, i) if picture is not None else None
            if explained is None:
                continue
            heat, target = explained
            path = save_map_overlay(picture, heat, Path(out_dir) / f"{stems[i]}.heatmap.png")
            label = classes[target] if classes is not None else str(target)
            figures.append((f"Heatmap {Path(name).name}: predicted {label}", path))
        return figures


def prediction_frame(
    slides: list[str], probs: np.ndarray, classes: list[str], extra: dict[str, Any] | None = None
) -> pd.DataFrame:
    """``slide, [extra...], predicted, prob_<class>...`` with one row per slide."""
    frame = pd.DataFrame({"slide": slides, **(extra or {})})
    frame["predicted"] = [classes[i] for i in probs.argmax(1)] if len(probs) else []
    for k, name in enumerate(classes):
        frame[f"prob_{name}"] = probs[:, k] if len(probs) else []
    return frame
