"""The pipeline's expected errors: each message is one line naming the file, column, key or rows.

Kept free of heavy imports so the command line can report them without loading torch.
"""


class DataError(ValueError):
    """The data does not match the config."""


class ExperimentError(RuntimeError):
    """The experiment folder holds results of a different configuration."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or unsafe."""


class Interrupted(Exception):
    """Training was stopped by Ctrl-C between two steps; the same command resumes it."""
