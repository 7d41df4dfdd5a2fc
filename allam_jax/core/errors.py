"""Error classes every layer raises; importing this module loads nothing else."""


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and the value."""


class DoesNotFit(RuntimeError):
    """A program compiled for a topology needs more memory per device than the device has."""
