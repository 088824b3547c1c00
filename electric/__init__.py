"""Electric: active-active replication between PostgreSQL and Satellite clients via Vaxine."""

__version__ = "0.1.0"
