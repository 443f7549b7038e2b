"""Expected failures: what a user can cause, each in one line that names the culprit and what to do.

Every expected failure raises a TinyllmError. Rule scripts (tinyllm.logs) and the CLI (tinyllm.cli) catch it
once and print its message alone, without a traceback; any other exception is a bug and keeps its traceback.
The kinds say where the fault lies, so a caller can tell them apart when it must (the fault tests do).
"""

from __future__ import annotations


def one_line(text: object, limit: int | None = None) -> str:
    """text with every run of whitespace (newlines included) folded into one space, cut at limit."""
    line = " ".join(str(text).split())
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


class TinyllmError(Exception):
    """An expected failure; str() is one line."""

    def __init__(self, message: object):
        super().__init__(one_line(message))


class ConfigError(TinyllmError):
    """A configuration value (or a command-line option) is missing, of the wrong type or inconsistent."""


class DataError(TinyllmError):
    """An input file is missing, unreadable or malformed: archive, corpus source, shard, tokenizer."""


class DownloadError(TinyllmError):
    """A remote source could not be fetched or is not what was asked for."""


class CheckpointError(TinyllmError):
    """A checkpoint cannot be read, is of a foreign format, or does not fit the model asked for."""


class DeviceError(TinyllmError):
    """A requested device that this machine does not have."""


class OutputError(TinyllmError):
    """An output cannot be written where it belongs: a read-only filesystem, no permission, a file where a
    folder belongs (or a folder where a file belongs); the previous file is untouched."""


class DiskFullError(TinyllmError):
    """The disk filled up (or a quota ran out) while writing an output; the previous file is untouched."""


class TrainingDiverged(TinyllmError):
    """The loss became NaN or infinite; the last good training state stays."""


class TrainingStopped(TinyllmError):
    """SIGTERM or SIGINT stopped training after a step whose state was saved; rerun to resume."""
