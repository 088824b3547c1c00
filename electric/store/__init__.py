"""The embedded store: Electric's CRDT log and row states in process, on SQLite."""

from electric.store.engine import ChainBroken, StoreFormatError
from electric.store.merge import UnmappableChange
from electric.store.service import BigTransaction, ChainedWriter, LocalStore, WriteChain

__all__ = ["BigTransaction", "ChainBroken", "ChainedWriter", "LocalStore", "StoreFormatError", "UnmappableChange",
           "WriteChain"]
