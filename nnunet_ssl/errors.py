"""Errors that the commands report as one clear message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (a missing dataset, an incompatible checkpoint, a file in the way).

    The message says what is wrong and what to do about it.
    """
