"""One error type for everything a user can get wrong (bad input, bad config, unknown names)."""


class TailsynthError(ValueError):
    """A problem with the user's input, config or files; the message names what and where."""


class UnknownNameError(TailsynthError, KeyError):
    """A registry lookup for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""
