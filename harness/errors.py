"""Errors a user can fix: printed as one line, exit code 2, no traceback."""


class UserError(Exception):
    """Bad configuration or input; the message says what is wrong and how to fix it."""
