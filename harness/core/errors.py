"""Errors a user can fix, and every exit code `bench` returns (defined here only)."""

EXIT_OK = 0
EXIT_REGRESSION = 1  # `bench compare`/`bench ab --fail-on-regression` found a regression
EXIT_FAILED = 1  # the one job a command was given failed (bench profile: the case's profile)
EXIT_USER_ERROR = 2  # bad input: one line on stderr, no traceback
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: the run is marked interrupted and can be resumed


class UserError(Exception):
    """Bad configuration or input; the message says what is wrong and how to fix it."""


class Unsupported(Exception):
    """A backend or variant cannot run this case (recorded as status "unsupported")."""
