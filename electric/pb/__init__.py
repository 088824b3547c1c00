"""Protobuf modules generated from proto/ by `make compile` (not committed)."""
