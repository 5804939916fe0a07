"""The one exception type the CLI and TUI show to people as a single line."""


class UserError(Exception):
    """Bad input or a state a person must fix; the message says what and how."""
