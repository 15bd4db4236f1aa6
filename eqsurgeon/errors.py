"""Exception types for user mistakes.

Every message names the problem and the fix in one line; the CLI prints it and exits with code 2.
Internal invariants use ``assert`` instead.
"""

from __future__ import annotations


class EqSurgeonError(ValueError):
    """A problem with what the user asked for (a file, a model, data, a checkpoint)."""


class ModelLoadError(EqSurgeonError):
    """The model spec, its factory or its checkpoint could not be turned into a module."""


class CaptureError(EqSurgeonError):
    """Neither torch.fx nor torch.export could capture the model's graph."""


class DataError(EqSurgeonError):
    """An image folder or dataset is missing, empty or unreadable."""


class CheckpointError(EqSurgeonError):
    """A checkpoint does not fit the model, or was already equalized."""


class RecipeError(EqSurgeonError):
    """A training recipe has an unknown key, a mistyped value, or does not match its run folder."""


class TrainingError(EqSurgeonError):
    """A training run cannot go on (the loss became NaN or inf); the message says what was kept."""


class OutputExistsError(EqSurgeonError):
    """An output file exists and ``--force`` was not given."""
