"""The package's own error for a bad setting, importable from anywhere without an import circle."""
from __future__ import annotations


class ConfigError(ValueError):
    """A model setting is unknown or has an invalid value."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition``."""
    if not condition:
        raise ConfigError(message)
