"""Errors that users see as one line.

`UserError` is bad input (a wrong config key, a malformed row, a missing adapter): the CLI prints its
message and exits with code 2. Anything else is a failure of the program: exit code 1.
"""


class UserError(Exception):
    """Bad input, reported as one line and exit code 2 by the CLI."""


class Terminated(KeyboardInterrupt):
    """SIGTERM during training, raised by the signal handler: handled like Ctrl-C (MLflow run KILLED,
    resumable); the CLI exits 143 (128 + SIGTERM) with one line."""
