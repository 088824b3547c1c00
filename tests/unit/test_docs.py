"""Every document the code cites is in docs/, and every section or gap id it names exists."""

import os
import re

from tests.support.electric import ROOT

CITATION = re.compile(r"docs/([\w-]+\.md)((?:,? §[\d.]+(?:[–-][\d.]+)?(?: and §[\d.]+)?)*)")
SECTION = re.compile(r"§([\d.]+)")


def sources():
    for top in ("electric", "tests", "bench"):
        for folder, _dirs, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path, encoding="utf-8") as fh:
                        yield os.path.relpath(path, ROOT), fh.read()


def headings(doc: str) -> set[str]:
    with open(os.path.join(ROOT, "docs", doc), encoding="utf-8") as fh:
        return {m.group(1).rstrip(".") for m in re.finditer(r"^#+ ([\d.]+)\.? ", fh.read(), re.M)}


def test_cited_documents_and_sections_exist():
    missing = []
    for path, text in sources():
        for m in CITATION.finditer(text):
            doc = m.group(1)
            if not os.path.exists(os.path.join(ROOT, "docs", doc)):
                missing.append((path, doc))
                continue
            known = headings(doc)
            missing += [(path, f"{doc} §{s}") for s in SECTION.findall(m.group(2))
                        if s.rstrip(".") not in known]
    assert not missing, missing


def test_gap_ids_in_code_are_described():
    with open(os.path.join(ROOT, "docs", "gaps.md"), encoding="utf-8") as fh:
        described = set(re.findall(r"^\| ([GP]\d+) \|", fh.read(), re.M))
    cited = {(path, gap) for path, text in sources() if "docs/gaps.md" in text
             for gap in re.findall(r"\b(G\d+)\b", text)}
    assert cited and not {c for c in cited if c[1] not in described}, sorted(cited)


def test_no_citation_of_documents_outside_the_repository():
    stray = [(path, m.group(0)) for path, text in sources()
             for m in re.finditer(r"(?<![\w-])(satellite|postgres|vaxine|postgres15-subscriber|"
                                  r"psycopg2-gevent)\.md\b", text)]
    assert not stray, stray
