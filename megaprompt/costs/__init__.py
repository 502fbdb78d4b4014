"""Cost tools: exact parameter counts (``params``) and training-memory estimates (``memory``).

Console scripts: ``megaprompt-param-ratio`` -> ``megaprompt.costs.params:main``,
``megaprompt-memory`` -> ``megaprompt.costs.cli:main``.
"""
from megaprompt.costs.params import Backbone, CostInputError, count, resolve_backbone
from megaprompt.costs.presets import PRESETS

__all__ = ["Backbone", "CostInputError", "PRESETS", "count", "resolve_backbone"]
