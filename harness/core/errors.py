"""Errors a user can fix, and every exit code `bench` returns (defined here only)."""

EXIT_OK = 0
# `bench compare`/`bench ab --fail-on-regression` found a regression, a newly failing case, or
# (unless --allow-missing) a case missing from the current run or failing on both sides
EXIT_REGRESSION = 1
EXIT_FAILED = 1  # the one job a command was given failed (bench profile: the profile; history bisect: no step)
EXIT_USER_ERROR = 2  # bad input: one line on stderr, no traceback
# bench run finished, and cases failed (error, timeout, oom): any, with --fail-on-error; without it,
# only when no case is ok. skipped and unsupported are the sweep's decisions, not failures.
EXIT_CASES_FAILED = 3
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): the run is marked interrupted and can be resumed
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM), as a shell reports it: interrupted too
EXIT_WRITE_FAILED = 74  # results could not be written (disk full, file-size limit): sysexits' EX_IOERR
EXIT_BROKEN_PIPE = 141  # stdout's reader left early (`| head`): 128 + SIGPIPE, as a shell reports it


class UserError(Exception):
    """Bad configuration or input; the message says what is wrong and how to fix it."""


class Unsupported(Exception):
    """A backend or variant cannot run this case (recorded as status "unsupported")."""


class WriteFailed(Exception):
    """Results could not be written to the run folder (disk full, file-size limit, ...).
    The message names the file and the cause; the run is marked interrupted where possible."""
