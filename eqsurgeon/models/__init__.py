"""Built-in model zoo: the paper's decoder heads on timm backbones."""

from eqsurgeon.models.registry import (
    ModelEntry,
    create_model,
    is_model,
    list_models,
    model_entry,
    register_model,
)

__all__ = ["ModelEntry", "create_model", "is_model", "list_models", "model_entry", "register_model"]
