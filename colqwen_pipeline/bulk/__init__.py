"""Many documents through every stage in one process: the engine behind every ingest run
(CLI, sensor, schedule, UI backfill). See ``engine.run_documents``."""
