"""colqwen-pipeline: documents -> page images -> ColQwen2.5 multi-vectors -> Milvus, on Dagster.

Keep this module import-light: the render worker and the CLI import it at start-up.
"""

__version__ = "0.1.0"
