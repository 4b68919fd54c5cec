"""Model inputs by kind: how rows of a manifest become batches a model consumes.

Each kind (:class:`InputKind`) prepares the inputs of a list of slides once (cached, in memory), says
how to normalise them, builds batches (augmented when training) and, for test-time augmentation, the
views of a batch. The engine asks a model's registry entry for its ``input_kind`` and does the rest
through this interface, so a new kind of model brings its kind here and reuses the whole engine.

Built-in kinds: ``lowres`` (one whole-tissue image per slide), ``bag`` (tile features with
coordinates, for multiple-instance learning), ``pair`` (an H&E and an IHC image of the same tissue).
"""

from her2score.data.inputs.base import (
    Failure,
    InputKind,
    Prepared,
    create_input_kind,
    get_input_kind,
    list_input_kinds,
    register_input_kind,
)

__all__ = [
    "Failure",
    "InputKind",
    "Prepared",
    "create_input_kind",
    "get_input_kind",
    "list_input_kinds",
    "register_input_kind",
]
