"""The training, evaluation and checkpoint engine shared by every model."""
