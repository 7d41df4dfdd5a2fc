"""Error classes every layer raises; importing this module loads nothing else."""


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and the value."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (libraries' errors run to pages), or its type's name."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__
