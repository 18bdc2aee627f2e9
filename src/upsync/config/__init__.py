"""nginx-syntax configuration: parsed by crossplane, validated once into immutable objects."""

from upsync.config.loader import load_config
from upsync.config.model import Config

__all__ = ["Config", "load_config"]
