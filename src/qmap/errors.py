"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class QmapError(Exception):
    """Base class of every error caused by the user's input (files, configs, options)."""

    exit_code = 2


class DataError(QmapError):
    """A dataset is missing, corrupt or of the wrong shape."""


class CheckpointError(QmapError):
    """A checkpoint cannot be read or does not match the model."""


class ConfigError(QmapError):
    """A config or option is invalid (unknown key, impossible bit width, ...)."""


class HardwareError(QmapError):
    """A layer does not fit the array, a value does not fit its declared width, a file is malformed."""


def reject_unknown_keys(given, known, what: str) -> None:
    """Raise :class:`ConfigError` naming every key of ``given`` not in ``known`` (and listing the known ones)."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
