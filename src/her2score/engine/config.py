"""Training configuration: one dataclass, loaded from YAML/JSON with validation, saved resolved in the run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from her2score.data.augment import AugmentConfig
from her2score.errors import ConfigError

BALANCE_MODES = ("weighted-loss", "sampler", "none")
#: Model options that stand as top-level keys (most models take them); any other option goes in
#: ``model_args``. Each is passed to a model only when its factory takes it.
SHARED_MODEL_KEYS = ("backbone", "weights", "norm", "drop_rate", "stain_head")
#: Keys of the data configuration of image input kinds.
DATA_KEYS = ("mpp", "input_size", "margin")
SELECT_MODES = ("f1", "loss", "last")
#: How the epoch count and the fusion weight are chosen: ``validation`` (early stopping and the fusion
#: weight on the validation slides), ``inner-cv`` (patient-grouped inner cross-validation over the
#: training and validation slides, then one model trained on all of them), ``auto`` (inner-cv when there
#: are fewer than INNER_CV_MAX_SLIDES of them, where a validation split is a handful of slides, but at
#: least INNER_CV_MIN_SLIDES: below that an inner fold would train on two or three slides per class).
MODEL_CHOICES = ("auto", "inner-cv", "validation")
INNER_CV_MAX_SLIDES = 60  # from 60 slides a 20 % split has 12 or more; inner CV costs 5 trainings
INNER_CV_MIN_SLIDES = 20


#: Named training presets. A preset sets keys under the config file and the command-line flags
#: (defaults < recipe < file < flags); the resolved values are saved in the run's ``config.yaml``.
#: ``small-cohort`` is the default (the TrainConfig defaults themselves): ResNet-18 from scratch with a
#: moving average of its weights and the stain-statistics head (colour and OD percentiles), 192 px at
#: 8 µm/px; with 20-59 training slides the epoch count and the fusion weight are chosen by inner
#: cross-validation (``model_choice: auto``), else on a validation split (README, Results).
#: ``legacy`` is the recipe before presets (ConvNeXt, 224 px, no EMA, no stain head, a validation split),
#: kept to compare.
RECIPES: dict[str, dict[str, Any]] = {
    "small-cohort": {},
    "legacy": {
        "model": "lowres-convnext", "input_size": 224, "epochs": 30, "batch_size": 16, "lr": 1e-3,
        "warmup_epochs": 1.0, "ema": 0.0, "stain_head": False, "patience": 10,
        "model_choice": "validation",
    },
}  # fmt: skip


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.yaml`` in the run folder.

    The defaults are the ``small-cohort`` recipe (see :data:`RECIPES`).
    """

    task: str = "her2-3way"
    equivocal: str = "ish"  # where HER2 2+ goes in her2-3way: ish, low or high
    recipe: str = "small-cohort"  # a named preset (RECIPES) applied under the config file and flags
    model: str = "lowres-resnet"
    backbone: str | None = None  # timm name; None: convnext_tiny on GPU, convnext_atto on CPU
    weights: str | None = None  # local pretrained weights (safetensors or timm checkpoint)
    norm: str = "auto"  # ConvNeXt normalisation: auto (batch from scratch, layer with weights), batch, layer
    mpp: float = 8.0
    input_size: int = 192
    margin: float = 0.02
    epochs: int = 40
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    balance: str = "weighted-loss"
    label_smoothing: float = 0.0
    ema: float = 0.99  # decay of an exponential moving average of the weights, per step (0: off)
    drop_rate: float = 0.0
    stain_head: bool = True  # fuse with a logistic regression on DAB/H quantiles of the training slides
    patience: int = 15  # stop after this many epochs without a better validation score (see select); 0: off
    select: str = "f1"  # which epoch's weights are kept: best validation f1, best validation loss, or last
    model_choice: str = "auto"  # auto, inner-cv or validation (MODEL_CHOICES): who picks epochs and fusion
    inner_folds: int = 4  # folds of the inner cross-validation (model_choice inner-cv, or auto when small)
    folds: int = 0  # >= 2: k-fold cross-validation; 0: fixed splits from the manifest, or a holdout
    test_fraction: float = 0.2
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    workers: int = 0
    cache_dir: str | None = None
    n_boot: int = 1000
    tta: bool = True  # test-time augmentation: average the 8 flips/rotations when predicting
    model_args: dict = field(default_factory=dict)  # further options of the model's factory (checked)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> TrainConfig:
        """Check ranges and names; raise ``ConfigError`` naming the bad key."""
        from her2score.data.manifest import EQUIVOCAL_RULES, TASKS

        checks = [
            (self.task in TASKS, f"task must be one of {', '.join(TASKS)}"),
            (self.equivocal in EQUIVOCAL_RULES, f"equivocal must be one of {', '.join(EQUIVOCAL_RULES)}"),
            (1.0 <= self.mpp <= 64.0, "mpp must be within 1-64 µm/px (8-16 suits whole-slide models)"),
            (16 <= self.input_size <= 4096, "input_size must be 16-4096 px"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (self.norm in ("auto", "batch", "layer"), "norm must be one of auto, batch, layer"),
            (self.balance in BALANCE_MODES, f"balance must be one of {', '.join(BALANCE_MODES)}"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.ema < 1, "ema must be in [0, 1) (0: off)"),
            (self.patience >= 0, "patience must be >= 0"),
            (self.select in SELECT_MODES, f"select must be one of {', '.join(SELECT_MODES)}"),
            (self.model_choice in MODEL_CHOICES, f"model_choice must be one of {', '.join(MODEL_CHOICES)}"),
            (self.inner_folds >= 2, "inner_folds must be >= 2"),
            (self.folds == 0 or self.folds >= 2, "folds must be 0 (no cross-validation) or >= 2"),
            (0 < self.test_fraction < 1, "test_fraction must be in (0, 1)"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (self.n_boot >= 0, "n_boot must be >= 0"),
            (self.workers >= 0, "workers must be >= 0"),
            (0 <= self.augment.crop <= self.input_size, "augment.crop must be 0 (off) to input_size px"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def resolved_cache_dir(self) -> Path:
        """Where prepared inputs are cached: ``cache_dir``, else her2score's (:mod:`her2score.paths`)."""
        from her2score.paths import cache_dir

        return Path(self.cache_dir) if self.cache_dir else cache_dir("lowres")

    def data_config(self) -> dict[str, Any]:
        """The data keys an input kind may take (each kind keeps those its constructor names)."""
        return {k: getattr(self, k) for k in DATA_KEYS}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_dict(data: dict[str, Any], source: str | Path | None = None) -> TrainConfig:
    """Build a validated ``TrainConfig``; unknown keys and wrong types are errors, not ignored."""
    data = dict(data or {})
    recipe = str(data.get("recipe") or TrainConfig.recipe)
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; recipes: {', '.join(RECIPES)}", source)
    data = {**RECIPES[recipe], **data, "recipe": recipe}
    augment = data.pop("augment", None) or {}
    if not isinstance(augment, dict):
        raise ConfigError("'augment' must be a mapping", source)
    cfg = TrainConfig(**_coerce(TrainConfig, data, source))
    cfg.augment = AugmentConfig(**_coerce(AugmentConfig, augment, source, prefix="augment."))
    try:
        return cfg.validate()
    except ConfigError as exc:
        raise ConfigError(exc.cause, source) from None


def _coerce(cls: type, data: dict[str, Any], source: str | Path | None, prefix: str = "") -> dict[str, Any]:
    known = {f.name: f for f in fields(cls) if f.name not in ("augment",)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key not in known:
            raise ConfigError(f"unknown config key '{prefix}{key}' (known: {', '.join(known)})", source)
        kind = str(known[key].type)
        try:
            if kind.startswith("dict"):
                if not isinstance(value, dict):
                    raise ValueError("must be a mapping of option names to values")
                out[key] = {str(k).replace("-", "_"): v for k, v in value.items()}
            elif value is None:
                if "None" not in kind:
                    raise ValueError("may not be empty")
                out[key] = None
            elif kind.startswith("bool"):
                if not isinstance(value, bool):
                    raise ValueError("must be true or false")
                out[key] = value
            elif kind.startswith("int"):
                if isinstance(value, bool) or float(value) != int(float(value)):
                    raise ValueError("must be an integer")
                out[key] = int(float(value))
            elif kind.startswith("float"):
                if isinstance(value, bool):
                    raise ValueError("must be a number")
                out[key] = float(value)
            else:
                out[key] = str(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config key '{prefix}{key}': {value!r} {exc}", source) from None
    return out


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Read a YAML or JSON config (or none), apply ``overrides`` that are not None, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("config file not found", path)
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix.lower() == ".json":
                data = json.loads(text) or {}
            else:
                import yaml

                data = yaml.safe_load(text) or {}
        except Exception as exc:
            raise ConfigError(f"cannot be parsed ({type(exc).__name__}: {exc})", path) from exc
        if not isinstance(data, dict):
            raise ConfigError("top level must be a mapping of keys to values", path)
    augment_over = overrides.pop("augment", None)
    data.update({k: v for k, v in overrides.items() if v is not None})

    if augment_over:
        data["augment"] = {**(data.get("augment") or {}), **augment_over}
    return config_from_dict(data, path)


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    import yaml

    from her2score.io import write_text

    return write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
