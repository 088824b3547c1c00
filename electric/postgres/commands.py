"""The text of a simple Query, classified into a typed command (docs/protocols.md §2.2).

:func:`parse_command` understands the replication commands and catalog queries a stock
subscriber sends (:class:`IdentifySystem`, :class:`StartReplication`,
:class:`ListPublicationTables`, …); whatever is not understood becomes :class:`Unsupported` so
the server can answer ``ErrorResponse(ERROR, 0A000)`` + ``ReadyForQuery`` instead of dropping
the connection. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from electric.postgres.lsn import Lsn


@dataclass(frozen=True)
class EmptyQuery:
    """Only whitespace/semicolons: answer EmptyQueryResponse + ReadyForQuery."""


@dataclass(frozen=True)
class SetConfig:
    """``SELECT pg_catalog.set_config('search_path', '', false)``.

    Reply: ``text_result([("set_config", "text")], [[value]])``.
    """

    name: str
    value: str
    is_local: bool


@dataclass(frozen=True)
class IdentifySystem:
    """Reply columns: systemid text, timeline int4, xlogpos text, dbname text."""


@dataclass(frozen=True)
class StartReplication:
    """``START_REPLICATION SLOT "s" LOGICAL X/Y (opt 'v', ...)``."""

    slot: str
    lsn: int
    options: dict[str, str | None] = field(default_factory=dict)

    @property
    def proto_version(self) -> int | None:
        v = self.options.get("proto_version")
        try:
            return int(v) if v is not None else None
        except ValueError:
            return None

    @property
    def publication_names(self) -> list[str]:
        raw = self.options.get("publication_names")
        return split_identifier_list(raw) if raw else []


@dataclass(frozen=True)
class ListPublicationTables:
    """The ``pg_publication_tables`` query (REFRESH PUBLICATION / CREATE SUBSCRIPTION).

    Reply columns: schemaname name, tablename name (+ attnames _name when ``with_attnames``,
    the PG15 numeric-version form).
    """

    publications: list[str]
    with_attnames: bool = False


@dataclass(frozen=True)
class ListPublications:
    """``SELECT t.pubname FROM pg_catalog.pg_publication t WHERE t.pubname IN (...)``.

    Reply: one ``pubname name`` row per publication that exists.
    """

    publications: list[str]


@dataclass(frozen=True)
class RelationInfo:
    """Table sync: ``SELECT c.oid, c.relreplident, c.relkind FROM pg_class ...``."""

    schema: str
    table: str


@dataclass(frozen=True)
class RelationColumns:
    """Table sync: the ``pg_attribute`` query. PG15 adds ``a.attnum`` as first column."""

    relid: int
    with_attnum: bool = False


@dataclass(frozen=True)
class TransactionControl:
    """BEGIN … / COMMIT / ROLLBACK / END / ABORT — reply CommandComplete(``kind``)."""

    kind: str  # "BEGIN", "COMMIT" or "ROLLBACK"


@dataclass(frozen=True)
class CreateReplicationSlot:
    slot: str
    temporary: bool
    logical: bool
    plugin: str | None
    options: str  # the rest, unparsed (e.g. "USE_SNAPSHOT" or "(SNAPSHOT 'use')")


@dataclass(frozen=True)
class DropReplicationSlot:
    slot: str
    wait: bool


@dataclass(frozen=True)
class Show:
    name: str


@dataclass(frozen=True)
class SetParameter:
    name: str
    value: str


@dataclass(frozen=True)
class Unsupported:
    """Anything else. Answer :func:`unsupported_response` (ERROR 0A000 + ReadyForQuery)."""

    text: str
    reason: str = "not supported by Electric"


Command = (
    EmptyQuery
    | SetConfig
    | IdentifySystem
    | StartReplication
    | ListPublicationTables
    | ListPublications
    | RelationInfo
    | RelationColumns
    | TransactionControl
    | CreateReplicationSlot
    | DropReplicationSlot
    | Show
    | SetParameter
    | Unsupported
)




def normalize_query(text: str) -> str:
    """docs/protocols.md §2.2: drop trailing NULs and ``;``, collapse whitespace outside quotes.

    Quoted strings (``'…'`` with ``''``, ``E'…'`` with backslash escapes, ``"…"``) are kept
    byte for byte, so literals such as publication names survive intact.
    """
    text = text.strip()
    while text.endswith("\0"):  # NULs and white space may alternate at the end
        text = text.rstrip("\0").rstrip()
    out: list[str] = []
    i, n = 0, len(text)
    pending_space = False
    while i < n:
        ch = text[i]
        if ch.isspace():
            pending_space = True
            i += 1
            continue
        if pending_space and out:
            out.append(" ")
        pending_space = False
        if ch in "'\"":
            backslash = ch == "'" and i > 0 and text[i - 1] in "eE" and _is_estring_prefix(text, i)
            j = _skip_quoted(text, i, backslash)
            out.append(text[i:j])
            i = j
            continue
        out.append(ch)
        i += 1
    result = "".join(out)
    while result.endswith(";") or result.endswith(" "):
        result = result[:-1]
    return result


def _is_estring_prefix(text: str, quote_pos: int) -> bool:
    # E'...' only when the E is a token on its own (not the end of an identifier).
    return quote_pos < 2 or not (text[quote_pos - 2].isalnum() or text[quote_pos - 2] == "_")


def _skip_quoted(text: str, i: int, backslash: bool) -> int:
    """Index just past the quoted token starting at ``text[i]`` (or len(text) if unclosed)."""
    q = text[i]
    j = i + 1
    n = len(text)
    while j < n:
        c = text[j]
        if backslash and c == "\\":
            j += 2
            continue
        if c == q:
            if j + 1 < n and text[j + 1] == q:
                j += 2
                continue
            return j + 1
        j += 1
    return n


# A quoted SQL literal as the subscriber builds it (quote_literal: '' doubling, E'' when
# the value contains a backslash).
_LIT = r"(?:[Ee]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*')"
_LIT_LIST = rf"{_LIT}(?:\s*,\s*{_LIT})*"


def unquote_literal(lit: str) -> str:
    """``'it''s'`` → ``it's``; ``E'a\\\\b'`` → ``a\\b``."""
    if lit[:1] in "eE" and lit[1:2] == "'":
        body = lit[2:-1].replace("''", "'")
        return re.sub(r"\\(.)", r"\1", body)
    if len(lit) >= 2 and lit[0] == lit[-1] == "'":
        return lit[1:-1].replace("''", "'")
    raise ValueError(f"not a string literal: {lit!r}")


def _literal_list(text: str) -> list[str]:
    return [unquote_literal(m.group(0)) for m in re.finditer(_LIT, text)]


def split_identifier_list(text: str) -> list[str]:
    """Postgres' SplitIdentifierString: ``"a", b ,"C""d"`` → ``['a', 'b', 'C"d']``.

    Unquoted names are lower-cased, as Postgres does.
    """
    names: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            j = _skip_quoted(text, i, False)
            names.append(text[i + 1 : j - 1].replace('""', '"'))
            i = j
        else:
            j = i
            while j < n and text[j] != "," and not text[j].isspace():
                j += 1
            if j == i:
                raise ValueError(f"bad identifier list: {text!r}")
            names.append(text[i:j].lower())
            i = j
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return names
        if text[i] != ",":
            raise ValueError(f"bad identifier list: {text!r}")
        i += 1


_I = re.IGNORECASE
_RE_SET_CONFIG = re.compile(
    rf"^SELECT (?:pg_catalog\.)?set_config\(\s*(?P<name>{_LIT})\s*,\s*(?P<value>{_LIT})\s*,"
    r"\s*(?P<local>true|false)\s*\)$",
    _I,
)
_RE_LIST_TABLES = re.compile(
    r"^SELECT DISTINCT t\.schemaname\s*,\s*t\.tablename(?P<attnames>\s*,\s*t\.attnames)?"
    rf" FROM pg_catalog\.pg_publication_tables t WHERE t\.pubname IN \(\s*(?P<list>{_LIT_LIST})\s*\)$",
    _I,
)
_RE_LIST_PUBS = re.compile(
    r"^SELECT t\.pubname FROM pg_catalog\.pg_publication t WHERE t\.pubname IN"
    rf" \(\s*(?P<list>{_LIT_LIST})\s*\)$",
    _I,
)
_RE_RELATION_INFO = re.compile(
    r"^SELECT c\.oid\s*,\s*c\.relreplident\s*,\s*c\.relkind FROM pg_catalog\.pg_class c"
    r" INNER JOIN pg_catalog\.pg_namespace n ON \(c\.relnamespace = n\.oid\)"
    rf" WHERE n\.nspname = (?P<schema>{_LIT}) AND c\.relname = (?P<table>{_LIT})$",
    _I,
)
_RE_RELATION_COLUMNS = re.compile(
    r"^SELECT (?P<attnum>a\.attnum\s*,\s*)?a\.attname\s*,\s*a\.atttypid\s*,\s*"
    r"a\.attnum = ANY\(i\.indkey\) FROM pg_catalog\.pg_attribute a .*"
    r"\bAND a\.attrelid = (?P<relid>\d+) ORDER BY a\.attnum$",
    _I,
)
_RE_SHOW = re.compile(r"^SHOW (?P<name>[A-Za-z_][\w.]*|\"[^\"]+\")$", _I)
_RE_SET = re.compile(
    r"^SET (?:SESSION |LOCAL )?(?P<name>[A-Za-z_][\w.]*) *(?:=|\bTO\b) *(?P<value>.+)$", _I
)
_RE_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")


def parse_command(text: str) -> Command:
    """Classify the text of a simple Query (docs/protocols.md §2.2)."""
    q = normalize_query(text)
    if not q:
        return EmptyQuery()
    if _has_unquoted(q, ";"):
        return Unsupported(q, "multiple statements in one query are not supported")
    word, _, rest = q.partition(" ")
    kw = word.upper()
    try:
        if kw == "SELECT":
            return _parse_select(q)
        if kw == "IDENTIFY_SYSTEM":
            return IdentifySystem() if not rest else Unsupported(q, "syntax error")
        if kw == "START_REPLICATION":
            return _parse_start_replication(q, rest)
        if kw == "CREATE_REPLICATION_SLOT":
            return _parse_create_slot(q, rest)
        if kw == "DROP_REPLICATION_SLOT":
            return _parse_drop_slot(q, rest)
        if kw in ("BEGIN", "START") and (kw == "BEGIN" or rest.upper().startswith("TRANSACTION")):
            return TransactionControl("BEGIN")
        if kw in ("COMMIT", "END") and rest.upper() in ("", "WORK", "TRANSACTION"):
            return TransactionControl("COMMIT")
        if kw in ("ROLLBACK", "ABORT") and rest.upper() in ("", "WORK", "TRANSACTION"):
            return TransactionControl("ROLLBACK")
        if kw == "SHOW":
            m = _RE_SHOW.match(q)
            if m:
                return Show(_ident(m.group("name")))
        if kw == "SET":
            m = _RE_SET.match(q)
            if m:
                value = m.group("value").strip()
                if re.fullmatch(_LIT, value):
                    value = unquote_literal(value)
                return SetParameter(m.group("name").lower(), value)
    except ValueError as exc:
        return Unsupported(q, f"could not parse {kw}: {exc}")
    return Unsupported(q, f"{kw} is not supported by Electric" if kw else "not supported")


def _has_unquoted(q: str, ch: str) -> bool:
    i, n = 0, len(q)
    while i < n:
        c = q[i]
        if c in "'\"":
            backslash = c == "'" and i > 0 and q[i - 1] in "eE" and _is_estring_prefix(q, i)
            i = _skip_quoted(q, i, backslash)
            continue
        if c == ch:
            return True
        i += 1
    return False


def _parse_select(q: str) -> Command:
    if m := _RE_SET_CONFIG.match(q):
        return SetConfig(
            unquote_literal(m.group("name")),
            unquote_literal(m.group("value")),
            m.group("local").lower() == "true",
        )
    if m := _RE_LIST_TABLES.match(q):
        return ListPublicationTables(_literal_list(m.group("list")), bool(m.group("attnames")))
    if m := _RE_LIST_PUBS.match(q):
        return ListPublications(_literal_list(m.group("list")))
    if m := _RE_RELATION_INFO.match(q):
        return RelationInfo(unquote_literal(m.group("schema")), unquote_literal(m.group("table")))
    if m := _RE_RELATION_COLUMNS.match(q):
        return RelationColumns(int(m.group("relid")), bool(m.group("attnum")))
    return Unsupported(q, "query not supported by Electric")


# -- replication command tokenizer (the walsender grammar, the parts we need) ----------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lsn>[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8})(?![\w/])
      | (?P<qident>"(?:[^"]|"")*")
      | (?P<str>[Ee]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*')
      | (?P<ident>[A-Za-z_][\w$]*)
      | (?P<num>\d+)
      | (?P<punct>[(),=])
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str

    @property
    def value(self) -> str:
        if self.kind == "qident":
            return self.text[1:-1].replace('""', '"')
        if self.kind == "ident":
            return self.text.lower()
        if self.kind == "str":
            return unquote_literal(self.text)
        return self.text


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"unexpected input at {text[pos : pos + 20]!r}")
        kind = m.lastgroup
        assert kind is not None
        toks.append(_Tok(kind, m.group(kind)))
        pos = m.end()
    return toks


def _ident(text: str) -> str:
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return text[1:-1].replace('""', '"')
    return text.lower()


def _expect_kw(toks: list[_Tok], i: int, kw: str) -> int:
    if i >= len(toks) or toks[i].kind != "ident" or toks[i].text.upper() != kw:
        raise ValueError(f"expected {kw}")
    return i + 1


def _name_at(toks: list[_Tok], i: int, what: str) -> str:
    if i >= len(toks) or toks[i].kind not in ("ident", "qident"):
        raise ValueError(f"expected {what}")
    return toks[i].value


def _parse_start_replication(q: str, rest: str) -> Command:
    toks = _tokenize(rest)
    if not toks or toks[0].kind != "ident" or toks[0].text.upper() != "SLOT":
        return Unsupported(q, "physical replication is not supported by Electric")
    slot = _name_at(toks, 1, "slot name")
    if len(toks) < 3 or toks[2].kind != "ident" or toks[2].text.upper() != "LOGICAL":
        return Unsupported(q, "physical replication is not supported by Electric")
    if len(toks) < 4 or toks[3].kind != "lsn":
        raise ValueError("expected an LSN (X/Y)")
    lsn = int(Lsn.parse(toks[3].text))
    options = _parse_options(toks, 4)
    return StartReplication(slot, lsn, options)


def _parse_options(toks: list[_Tok], i: int) -> dict[str, str | None]:
    """``( name ['value'] [, ...] )`` — the logical decoding plugin options."""
    options: dict[str, str | None] = {}
    if i == len(toks):
        return options
    if toks[i].text != "(":
        raise ValueError("expected '(' before options")
    i += 1
    if i < len(toks) and toks[i].text == ")":
        i += 1
    else:
        while True:
            name = _name_at(toks, i, "option name")
            i += 1
            value: str | None = None
            if i < len(toks) and toks[i].kind in ("str", "ident", "num", "qident"):
                value = toks[i].value if toks[i].kind != "ident" else toks[i].text
                i += 1
            options[name] = value
            if i < len(toks) and toks[i].text == ",":
                i += 1
                continue
            if i < len(toks) and toks[i].text == ")":
                i += 1
                break
            raise ValueError("expected ',' or ')' in options")
    if i != len(toks):
        raise ValueError("unexpected text after options")
    return options


def _parse_create_slot(q: str, rest: str) -> Command:
    m = re.match(r'\s*("(?:[^"]|"")*"|[A-Za-z_][\w$]*)\s*(.*)$', rest)
    if not m:
        raise ValueError("expected slot name")
    slot = _ident(m.group(1))
    tail = m.group(2)
    temporary = False
    if re.match(r"TEMPORARY\b", tail, _I):
        temporary = True
        tail = tail[len("TEMPORARY") :].lstrip()
    if re.match(r"PHYSICAL\b", tail, _I):
        return CreateReplicationSlot(slot, temporary, False, None, tail[len("PHYSICAL") :].strip())
    if not re.match(r"LOGICAL\b", tail, _I):
        raise ValueError("expected LOGICAL or PHYSICAL")
    tail = tail[len("LOGICAL") :].lstrip()
    pm = re.match(r'("(?:[^"]|"")*"|[A-Za-z_][\w$]*)\s*(.*)$', tail)
    if not pm:
        raise ValueError("expected output plugin name")
    return CreateReplicationSlot(slot, temporary, True, _ident(pm.group(1)), pm.group(2).strip())


def _parse_drop_slot(q: str, rest: str) -> Command:
    toks = _tokenize(rest)
    slot = _name_at(toks, 0, "slot name")
    if len(toks) == 1:
        return DropReplicationSlot(slot, False)
    if len(toks) == 2 and toks[1].kind == "ident" and toks[1].text.upper() == "WAIT":
        return DropReplicationSlot(slot, True)
    raise ValueError("unexpected text after slot name")

