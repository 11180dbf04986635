"""The embedded default job behind ``make demo`` / ``dwakd demo``."""
