"""The in-memory state the offset file's records build, and what a compacted file holds.
Sans-I/O: the store replays every record into it at open and after each durable put."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from electric.offsets.records import (
    HEADER_SIZE,
    REC_HEAD_SIZE,
    PgGc,
    PgMappings,
    SatelliteLsn,
    decode,
    encode_pg_mappings,
    encode_satellite,
    frame,
    header_bytes,
)


@dataclass
class Slot:
    """Sorted parallel lists: ``lsns[i] -> offsets[i]`` (bisect on ``lsns``)."""

    lsns: list[int] = field(default_factory=list)
    offsets: list[bytes] = field(default_factory=list)


def _pg_entry_size(off: bytes) -> int:
    return 12 + len(off)


class OffsetIndex:
    """Satellite lsns by client and pg mappings by slot, with a running estimate of the
    bytes a compacted file would need (:attr:`live_bytes`, which drives auto-compaction)."""

    def __init__(self) -> None:
        self.satellite: dict[str, bytes] = {}
        self.slots: dict[str, Slot] = {}
        self.live_bytes = HEADER_SIZE

    def apply(self, payload: memoryview) -> None:
        """Replay one record (``Malformed`` when it does not decode)."""
        record = decode(payload)
        if isinstance(record, SatelliteLsn):
            self.set_satellite(record.client_id, record.lsn)
        elif isinstance(record, PgMappings):
            self.add_mappings(record.slot, record.entries)
        elif isinstance(record, PgGc):
            self.drop_before(record.slot, record.keep_from)

    def set_satellite(self, client_id: str, lsn: bytes) -> None:
        old = self.satellite.get(client_id)
        if old is None:
            self.live_bytes += REC_HEAD_SIZE + len(encode_satellite(client_id, b""))
        else:
            self.live_bytes -= len(old)
        self.live_bytes += len(lsn)
        self.satellite[client_id] = lsn

    def add_mappings(self, slot: str, entries: Iterable[tuple[int, bytes]]) -> None:
        s = self.slots.get(slot)
        if s is None:
            s = self.slots[slot] = Slot()
            # One PG_MAPPINGS record per slot after compaction.
            self.live_bytes += REC_HEAD_SIZE + len(encode_pg_mappings(slot, []))
        for lsn, off in entries:
            if s.lsns and lsn <= s.lsns[-1]:
                # A mapping at or below the newest one means the publisher re-numbered from an
                # older subscriber position: everything from there on belongs to an abandoned
                # numbering and would map LSNs to the wrong transactions.
                cut = bisect.bisect_left(s.lsns, lsn)
                for dropped in s.offsets[cut:]:
                    self.live_bytes -= _pg_entry_size(dropped)
                del s.lsns[cut:]
                del s.offsets[cut:]
            s.lsns.append(lsn)
            s.offsets.append(off)
            self.live_bytes += _pg_entry_size(off)

    def drop_before(self, slot: str, keep_from: int) -> int:
        s = self.slots.get(slot)
        if s is None:
            return 0
        cut = bisect.bisect_left(s.lsns, keep_from)
        for dropped in s.offsets[:cut]:
            self.live_bytes -= _pg_entry_size(dropped)
        del s.lsns[:cut]
        del s.offsets[:cut]
        return cut

    def at_or_before(self, slot: str, lsn: int) -> tuple[int, bytes] | None:
        s = self.slots.get(slot)
        if s is None:
            return None
        i = bisect.bisect_right(s.lsns, lsn) - 1
        if i < 0:
            return None
        return s.lsns[i], s.offsets[i]

    def last(self, slot: str) -> tuple[int, bytes] | None:
        s = self.slots.get(slot)
        if s is None or not s.lsns:
            return None
        return s.lsns[-1], s.offsets[-1]

    def gc_point(self, slot: str, confirmed_lsn: int) -> int | None:
        """The lsn below which ``slot``'s mappings can go (the newest one ``<=
        confirmed_lsn``), or ``None`` when nothing would be dropped."""
        s = self.slots.get(slot)
        if s is None:
            return None
        i = bisect.bisect_right(s.lsns, confirmed_lsn) - 1
        return s.lsns[i] if i > 0 else None

    def slot_names(self) -> list[str]:
        return [name for name, s in self.slots.items() if s.lsns]

    def compacted(self) -> bytes:
        """The whole content of a file holding only the live records."""
        parts = [header_bytes()]
        for client_id, lsn in self.satellite.items():
            parts.append(frame(encode_satellite(client_id, lsn)))
        for slot, s in self.slots.items():
            if s.lsns:
                parts.append(
                    frame(encode_pg_mappings(slot, list(zip(s.lsns, s.offsets, strict=True))))
                )
        return b"".join(parts)

    def compacted_to(self, size: int) -> None:
        """A compacted file of ``size`` bytes replaced the old one: empty slots are gone."""
        self.live_bytes = size
        for slot in [name for name, s in self.slots.items() if not s.lsns]:
            del self.slots[slot]
