"""The one exception type the CLI turns into a one-line error."""


class OvltraceError(Exception):
    """A problem the user can act on; printed as one line, exit status 1."""
