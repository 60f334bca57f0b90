"""Error types. Every user-facing input problem raises ``RiaInputError`` with a
message that names the argument and the limit, so the CLI can print it without
a stack trace."""


class RiaInputError(ValueError):
    """Bad user input: shape, dtype, parameter out of range, unsupported model."""


class BackendUnavailableError(RuntimeError):
    """A backend was forced (argument or env override) but cannot run here."""
