"""The one exception type the CLI turns into a one-line message and exit status 2."""


class UserError(Exception):
    """A mistake the user can fix: bad flag, bad file, missing data.

    The message names the problem and the fix; the CLI prints it without a traceback.
    """
