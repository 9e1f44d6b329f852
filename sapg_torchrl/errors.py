"""The one exception type users see for bad settings."""

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A setting has a value SAPG cannot use. The message names the value and the accepted ones."""
