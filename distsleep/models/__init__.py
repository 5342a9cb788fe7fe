"""Sleep-staging models, built by name through the registry (see registry.py).

Each model lives in its own module and registers itself on import; import new model modules here.
"""

from distsleep.models import (  # noqa: F401  (each module registers its model)
    crossfusionsleepnet,
    isatsleepnet,
    mc2sleepnet,
    neuronet,
    synthsleepnet,
)
from distsleep.models.registry import (
    ChannelSlots,
    ModelSpec,
    UnknownModelError,
    build_model,
    get_spec,
    list_models,
    model_config_class,
    model_normalization,
    register,
    required_channels,
    resolve_channels,
)

__all__ = [
    "ChannelSlots",
    "ModelSpec",
    "UnknownModelError",
    "build_model",
    "get_spec",
    "list_models",
    "model_config_class",
    "model_normalization",
    "register",
    "required_channels",
    "resolve_channels",
]
