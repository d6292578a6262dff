"""Errors a user can cause. The CLI prints their message and exits non-zero (2)."""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do."""
