"""Configuration: one schema, and the machinery apart from it.

- ``schema.py``: every section of a run, in the order a YAML file has them (``model``, ``teacher``,
  ``data``, ``train`` with ``lora``, ``distill`` with ``loss``), each field documented by the string
  under it; ``load_config`` / ``save_config`` / ``load_model_config``. ``switchkd config --show``
  prints it.
- ``core.py``: the generic machinery (dicts to dataclasses, YAML, dotted overrides, ``ConfigError``).
"""

from switchkd.config.core import (
    ConfigError,
    apply_overrides,
    describe,
    field_docs,
    from_dict,
    load_yaml,
    read_config,
    read_utf8,
    require_folder,
    to_dict,
)
from switchkd.config.schema import (
    PARTS,
    STAGES,
    Config,
    DataConfig,
    DistillConfig,
    LoraSettings,
    ModelConfig,
    TrainConfig,
    load_config,
    load_model_config,
    save_config,
)

__all__ = [
    "PARTS",
    "STAGES",
    "Config",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "LoraSettings",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "describe",
    "field_docs",
    "from_dict",
    "load_config",
    "load_model_config",
    "load_yaml",
    "read_config",
    "read_utf8",
    "require_folder",
    "save_config",
    "to_dict",
]
