"""The error a configuration value raises, apart from the config package so that the lowest layers
(the losses validate their own options) can raise it without importing the schema."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value or combination that cannot work, with the dotted key that is wrong.

    A section's own check names the field (``key="lr"``); ``from_dict`` puts the section's path in
    front, so the message reads ``train.lr: ...`` wherever the section sits.
    """

    def __init__(self, message: str, *, key: str | None = None):
        self.key, self.problem = key, message
        super().__init__(f"{key}: {message}" if key else message)

    def under(self, section: str) -> ConfigError:
        """The same error with its key inside ``section`` (``pretrained`` -> ``teacher.pretrained``)."""
        return ConfigError(self.problem, key=f"{section}.{self.key}" if self.key else section)
