"""The one exception type the CLI turns into a one-line message and exit code 2."""


class RobustlabError(Exception):
    """Bad input: the message names the problem and the fix."""
