"""The code location of ``workspace.yaml`` and ``dagster dev -m colqwen_pipeline.definitions``: the
``Definitions`` built in ``defs/definitions.py``."""

from colqwen_pipeline.defs.definitions import RESOURCES, defs

__all__ = ["RESOURCES", "defs"]
