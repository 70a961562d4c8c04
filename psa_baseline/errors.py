"""One exception type for bad user input, so the CLI can print it without a traceback."""


class InputError(Exception):
    """Bad input (file, id, label value, config). The message names the culprit and the fix."""
