"""The one exception type the CLI reports without a traceback."""


class UserError(Exception):
    """Bad input from the user (a file, a directory, an option): printed as one clear line."""
