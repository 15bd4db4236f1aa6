"""Built-in model zoo: the paper's decoder heads on timm backbones.

Importing this package registers every zoo model with ``eqsurgeon.registry``.
"""

from eqsurgeon.registry import ModelEntry, create_model, is_model, list_models, model_entry, register_model
from eqsurgeon.zoo import zoo as _zoo  # noqa: F401  (registers the models)

__all__ = ["ModelEntry", "create_model", "is_model", "list_models", "model_entry", "register_model"]
