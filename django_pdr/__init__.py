"""django-pdr: Pantograph Database Replicator."""

__version__ = "2.0.0"
