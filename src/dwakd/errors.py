"""Exceptions users see. Each message says what went wrong and what to do about it."""


class DwakdError(Exception):
    """Base class for every error dwakd raises on purpose (bad input, missing files, ...)."""


class ConfigError(DwakdError, ValueError):
    """A configuration value is missing, unknown, of the wrong type, or incompatible."""


class DataError(DwakdError, ValueError):
    """A data file or record is malformed."""


class ModelLoadError(DwakdError):
    """A model or tokenizer could not be loaded."""


class StorageError(DwakdError, OSError):
    """The machine could not store something (disk full, file-size limit, quota, I/O error).

    Raised after the partial write was removed; the message says what happened and what is intact.
    """


class RunLockedError(DwakdError):
    """Another process is writing to this run directory."""


class TrainingInterrupted(DwakdError):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint at a step boundary."""

    def __init__(self, message: str, *, signum: int, checkpoint=None):
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint
