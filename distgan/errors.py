"""The one exception type for mistakes a user can fix: launchers print its message as one line."""


def first_line(error: BaseException, width: int = 300) -> str:
    """The first line of an exception's message, cut to ``width`` ('' for an empty message)."""
    text = str(error).strip().splitlines()
    return text[0][:width] if text else ""


class UserError(Exception):
    """Bad input: unknown option, impossible size, missing data, unreadable checkpoint, …

    The message says what is wrong and how to fix it, in one line.
    """
