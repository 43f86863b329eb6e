"""LoomDB (vectors) and OctoDB (tables).

- VectorStore (vectors.py): a durable vector store with exact, deterministic search on the CPU or GPU.
- Tables (tables.py): typed tables on SQLite.
"""
from .tables import Tables
from .vectors import METRICS, VectorStore

__all__ = ["METRICS", "Tables", "VectorStore"]
