"""The one exception type for mistakes a user can fix: launchers print its message as one line."""


class UserError(Exception):
    """Bad input: unknown option, impossible size, missing data, unreadable checkpoint, …

    The message says what is wrong and how to fix it, in one line.
    """
