"""Postgres type OIDs and how Electric names column types.

The reference kept a static OID table and refused any other type. Here the authoritative
source is the database's own ``pg_type`` (read at provisioning, see ``provision.py``);
this module only holds the built-in OIDs (stable across Postgres versions, useful to code
that has no catalog at hand, e.g. the publisher building Relation messages) and the rule for
types Electric does not know by name.

The rule: built-in types (and arrays of them) keep their ``pg_type.typname`` and OID. Every
other type — enums, domains, composites, ranges defined by users, extension types such as
``citext`` or ``hstore``, and arrays of those — replicates as ``text`` (OID 25): pgoutput
delivers every value in its text form anyway, and a stock subscriber converts text input into
its own local column type.
"""

from __future__ import annotations

from typing import NamedTuple

# Objects with OIDs below this were created by initdb (FirstNormalObjectId).
FIRST_NORMAL_OID = 16384

TEXT_OID = 25


class TypeInfo(NamedTuple):
    name: str
    oid: int
    array_oid: int


# name, oid, array oid (docs/protocols.md §3.2; these OIDs are fixed in pg_type.dat).
_BUILTINS = [
    ("bool", 16, 1000),
    ("bytea", 17, 1001),
    ("char", 18, 1002),
    ("name", 19, 1003),
    ("int8", 20, 1016),
    ("int2", 21, 1005),
    ("int2vector", 22, 1006),
    ("int4", 23, 1007),
    ("regproc", 24, 1008),
    ("text", 25, 1009),
    ("oid", 26, 1028),
    ("tid", 27, 1010),
    ("xid", 28, 1011),
    ("cid", 29, 1012),
    ("oidvector", 30, 1013),
    ("json", 114, 199),
    ("xml", 142, 143),
    ("xid8", 5069, 271),
    ("point", 600, 1017),
    ("lseg", 601, 1018),
    ("path", 602, 1019),
    ("box", 603, 1020),
    ("polygon", 604, 1027),
    ("line", 628, 629),
    ("float4", 700, 1021),
    ("float8", 701, 1022),
    ("circle", 718, 719),
    ("money", 790, 791),
    ("macaddr", 829, 1040),
    ("inet", 869, 1041),
    ("cidr", 650, 651),
    ("macaddr8", 774, 775),
    ("aclitem", 1033, 1034),
    ("bpchar", 1042, 1014),
    ("varchar", 1043, 1015),
    ("date", 1082, 1182),
    ("time", 1083, 1183),
    ("timestamp", 1114, 1115),
    ("timestamptz", 1184, 1185),
    ("interval", 1186, 1187),
    ("timetz", 1266, 1270),
    ("bit", 1560, 1561),
    ("varbit", 1562, 1563),
    ("numeric", 1700, 1231),
    ("refcursor", 1790, 2201),
    ("regprocedure", 2202, 2207),
    ("regoper", 2203, 2208),
    ("regoperator", 2204, 2209),
    ("regclass", 2205, 2210),
    ("regcollation", 4191, 4192),
    ("regtype", 2206, 2211),
    ("regrole", 4096, 4097),
    ("regnamespace", 4089, 4090),
    ("uuid", 2950, 2951),
    ("tsvector", 3614, 3643),
    ("gtsvector", 3642, 3644),
    ("tsquery", 3615, 3645),
    ("regconfig", 3734, 3735),
    ("regdictionary", 3769, 3770),
    ("jsonb", 3802, 3807),
    ("jsonpath", 4072, 4073),
    ("txid_snapshot", 2970, 2949),
    ("pg_snapshot", 5038, 5039),
    ("int4range", 3904, 3905),
    ("numrange", 3906, 3907),
    ("tsrange", 3908, 3909),
    ("tstzrange", 3910, 3911),
    ("daterange", 3912, 3913),
    ("int8range", 3926, 3927),
    ("record", 2249, 2287),
]

BY_NAME: dict[str, TypeInfo] = {n: TypeInfo(n, o, a) for n, o, a in _BUILTINS}
BY_OID: dict[int, TypeInfo] = {t.oid: t for t in BY_NAME.values()}
# Array types are named like Postgres does: "_" + element name.
ARRAY_BY_OID: dict[int, TypeInfo] = {t.array_oid: t for t in BY_NAME.values()}


def name_for_oid(oid: int) -> str | None:
    """Postgres' typname for a built-in OID (arrays as ``_elem``), else None."""
    info = BY_OID.get(oid)
    if info is not None:
        return info.name
    elem = ARRAY_BY_OID.get(oid)
    if elem is not None:
        return "_" + elem.name
    return None


def oid_for_name(name: str) -> int | None:
    """Inverse of :func:`name_for_oid` for built-in names (``"_int4"`` → 1007)."""
    if name.startswith("_") and name[1:] in BY_NAME:
        return BY_NAME[name[1:]].array_oid
    info = BY_NAME.get(name)
    return None if info is None else info.oid


def is_builtin(oid: int) -> bool:
    return 0 < oid < FIRST_NORMAL_OID


def replicated_type(oid: int, typname: str, type_modifier: int = -1) -> tuple[str, int, int]:
    """``(type name, type oid, type modifier)`` Electric records for a column.

    Built-in types keep their identity. Anything user- or extension-defined replicates as
    ``text`` with no modifier (see the module docstring for why that is safe).
    """
    if is_builtin(oid):
        return typname, oid, type_modifier
    return "text", TEXT_OID, -1
