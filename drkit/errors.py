"""Exceptions that the CLI turns into one clear line on stderr and an exit code."""


class DrkitError(Exception):
    """Bad input or a failed stage. The message is shown to the user as-is."""

    exit_code = 1


class NothingProcessed(DrkitError):
    """A batch stage could not process any of its inputs."""

    exit_code = 3



class UsageError(DrkitError):
    """A bad option value (a choice that does not exist, an impossible number): exit code 2,
    like the command-line parser's own usage errors."""

    exit_code = 2
