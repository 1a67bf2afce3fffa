"""The one exception type for user-facing mistakes (bad flags, missing or corrupt files, empty data)."""


class UserError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits non-zero, without a traceback."""
