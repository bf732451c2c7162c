"""User-facing errors: the CLI prints these as one line and exits with the class's documented exit code.

Exit codes of every ``qmap`` command (also in ``qmap --help`` and the README):

====  ===========================================================================================
0     success
1     a check ran and found a disagreement (e.g. ``qmap sim``: golden model or RTL != files)
2     usage or config error: bad flag, unknown/mistyped config key, value out of range, output folder refused
3     data error: dataset missing, corrupt, truncated, wrong shape, decompression bomb
4     checkpoint error: unreadable checkpoint, manifest mismatch (sha256, fields), bad BN/normalisation
5     hardware input error: malformed test-vector folder or manifest, a layer that does not fit the array
6     output error: an output folder or file cannot be written (read-only, not a folder, disk full)
70    internal error (a bug in qmap: please report it with ``--log-level debug`` output)
130   interrupted (Ctrl-C)
====  ===========================================================================================
"""

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class QmapError(Exception):
    """Base class of every error caused by the user's input (files, configs, options)."""

    exit_code = 2


class ConfigError(QmapError):
    """A config or option is invalid (unknown key, impossible bit width, ...)."""

    exit_code = 2


class DataError(QmapError):
    """A dataset is missing, corrupt or of the wrong shape."""

    exit_code = 3


class CheckpointError(QmapError):
    """A checkpoint cannot be read or does not match the model."""

    exit_code = 4


class HardwareError(QmapError):
    """A layer does not fit the array, a value does not fit its declared width, a file is malformed."""

    exit_code = 5


class OutputError(QmapError):
    """An output folder or file cannot be written (permissions, not a folder, no space)."""

    exit_code = 6


EXIT_CODES = {0: "success", 1: "a check found a disagreement", 2: "usage or config error", 3: "data error",
              4: "checkpoint error", 5: "hardware input error", 6: "output error", 70: "internal error",
              130: "interrupted"}


def reject_unknown_keys(given, known, what: str) -> None:
    """Raise :class:`ConfigError` naming every key of ``given`` not in ``known`` (and listing the known ones)."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"unknown {what}: {', '.join(map(str, unknown))}; known: {', '.join(sorted(known))}")
