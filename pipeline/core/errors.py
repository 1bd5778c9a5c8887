"""The pipeline's own error types: wrong input from the user, each message one line naming the
file, column, key or rows. The command line turns exactly these into ``error: <message>`` and exit
code 2; any other exception is a bug and keeps its traceback.

Kept free of heavy imports so the command line can report them without loading torch.
"""
import os
import sys


class PipelineError(Exception):
    """Base of every error that is the user's to fix (never a bug in the pipeline)."""


class ConfigError(PipelineError, ValueError):
    """A config file, override or command-line option is wrong; the message names the key."""


class DataError(PipelineError, ValueError):
    """The data does not match the config."""


class ExperimentError(PipelineError):
    """The experiment folder holds something else: another configuration, other data, foreign files."""


class LockedError(ExperimentError):
    """Another live process is training the same fold of the same experiment."""


class CheckpointError(PipelineError):
    """A checkpoint file is missing, truncated, corrupt or unsafe."""


class CheckpointReadError(PipelineError):
    """A checkpoint file could not be opened or read (an OSError: no permission, an I/O error, a stale
    network mount); not a CheckpointError, as it says nothing about the file's content."""


class StorageError(PipelineError):
    """A folder cannot be written: read-only, not allowed, or too little free space (pipeline/core/disk.py)."""


class Interrupted(Exception):
    """Training was stopped by Ctrl-C between two steps; the same command resumes it."""


def guarded(main) -> int:
    """``main()``'s exit code, with the pipeline's own errors turned into one line on stderr and exit
    code 2. Any other exception is a bug: its traceback is shown."""
    try:
        return main() or 0
    except PipelineError as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
            print(f"error: {e}", file=sys.stderr)
        return 2


def first_few(ids, n: int = 5) -> str:
    ids = list(ids)
    return ", ".join(map(str, ids[:n])) + (f", ... ({len(ids)} in all)" if len(ids) > n else f" ({len(ids)} in all)")
