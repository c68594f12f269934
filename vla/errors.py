"""Errors a user can cause. The CLI turns these into one line and a non-zero exit, not a traceback."""


class UserError(ValueError):
    """Bad input from the user: a path, a name, a shape. The message names the value and the valid choices."""


def choice_error(what: str, value: object, valid) -> UserError:
    """`unknown camera 'top'; valid: corner, corner2, corner3`."""
    return UserError(f"unknown {what} {value!r}; valid: {', '.join(map(str, valid))}")
