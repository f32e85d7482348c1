"""Configuration and registries: the single source of truth every other part reads."""
from .config import (DEFAULTS, ConfigError, apply_overrides, load_config, load_default_config,
                     save_config, validate_config)
from .registry import Registry

__all__ = ["DEFAULTS", "ConfigError", "Registry", "apply_overrides", "load_config",
           "load_default_config", "save_config", "validate_config"]
