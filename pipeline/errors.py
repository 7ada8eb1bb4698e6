"""The one exception type the CLI prints as a single line without a traceback."""


class UserError(Exception):
    """Bad input, config or environment: the message says what is wrong and what to do."""

    exit_code = 2


class JobFailed(Exception):
    """A job stopped after its retries ran out; the message names the frame and region."""

    exit_code = 3
