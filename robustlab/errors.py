"""The one exception type the CLI turns into a one-line message and exit code 2."""


class RobustlabError(Exception):
    """Bad input: the message names the problem and the fix."""


def write_error(e: OSError) -> RobustlabError:
    """A failed write (full disk, no permission) as a one-line error naming the file and the fix."""
    return RobustlabError(f"{e.filename or 'a file'}: {e.strerror or e}; free space or fix the permissions, then "
                          "run again")
