"""User-facing errors: raised for bad input, printed as one paragraph by `analysis.cli.run`."""


class UsageError(Exception):
    """Bad input or a missing resource the user can fix; the message says how."""


class ModelNotAvailableError(UsageError):
    """A model's weights could not be found locally and could not be downloaded."""
