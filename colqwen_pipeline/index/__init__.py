"""Milvus index and MaxSim search (base.py: the interface; milvus.py: the strategy)."""
