"""Errors the CLI prints as one clear line (no traceback): bad input, not bugs."""


class UserError(Exception):
    """An error in the user's input (recipe, file, argument)."""
