"""Errors a user can fix. Stage CLIs print their one line (no traceback) and exit with status 2."""


class UserError(Exception):
    """Bad input: the message names what to change (a config key, a file, a command to run first)."""
