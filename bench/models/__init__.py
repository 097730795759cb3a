"""Models, selected by name: ``create_model(name, input_size=40, width=1.0)``."""

from bench.models.registry import Output, create_model, model_names

__all__ = ["Output", "create_model", "model_names"]
