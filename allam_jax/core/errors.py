"""Error classes every layer raises; importing this module loads nothing else."""


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and the value."""
