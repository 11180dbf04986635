"""Exceptions users see. Each message says what went wrong and what to do about it."""


class DwakdError(Exception):
    """Base class for every error dwakd raises on purpose (bad input, missing files, ...)."""


class ConfigError(DwakdError, ValueError):
    """A configuration value is missing, unknown, of the wrong type, or incompatible."""


class DataError(DwakdError, ValueError):
    """A data file or record is malformed."""


class ModelLoadError(DwakdError):
    """A model or tokenizer could not be loaded."""
