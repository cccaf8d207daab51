"""Pure document handling: format parsing, heading-aware chunking and near-duplicate removal."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser

import numpy as np
import numpy.typing as npt

from retrieval.text import words

# A chunk holds at most this many words; MiniLM reads 256 word pieces, about 180 words.
MAX_WORDS = 140
OVERLAP_WORDS = 30
# Pieces shorter than this are merged into their neighbour inside the same section.
MIN_WORDS = 25


@dataclass(frozen=True)
class Section:
    heading_path: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class Parsed:
    title: str
    url: str
    sections: tuple[Section, ...]
    meta: dict[str, str]


# ---------------------------------------------------------------------------------------------
# Formats


def guess_format(name: str) -> str:
    lower = name.lower()
    if lower.endswith((".md", ".markdown", ".mdx")):
        return "markdown"
    if lower.endswith((".html", ".htm", ".xhtml")):
        return "html"
    return "text"


def split_front_matter(content: str) -> tuple[dict[str, str], str]:
    """`---` delimited `key: value` lines at the very top (a small YAML subset)."""
    if not content.startswith("---"):
        return {}, content
    lines = content.splitlines()
    if lines[0].strip() != "---":
        return {}, content
    for end in range(1, len(lines)):
        if lines[end].strip() in ("---", "..."):
            meta: dict[str, str] = {}
            for line in lines[1:end]:
                key, sep, value = line.partition(":")
                if sep and key.strip():
                    meta[key.strip().lower()] = value.strip().strip("\"'")
            return meta, "\n".join(lines[end + 1 :])
    return {}, content


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def markdown_sections(body: str) -> tuple[str, list[Section]]:
    """Sections under each heading, with the path of enclosing headings; first H1 = title."""
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    buf: list[str] = []
    title = ""
    in_fence = False

    def flush() -> None:
        text = "\n".join(buf).strip()
        buf.clear()
        if text:
            sections.append(Section(tuple(h for _, h in stack), text))

    for line in body.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            buf.append(line)
            continue
        m = None if in_fence else _MD_HEADING.match(line)
        if m is None:
            buf.append(line)
            continue
        flush()
        level, heading = len(m.group(1)), _strip_md(m.group(2))
        if level == 1 and not title and not sections:
            # The document's own H1 is its title, not a path element repeated on every chunk.
            title = heading
            continue
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, heading))
    flush()
    return title, sections


_MD_INLINE = re.compile(r"(\*\*|__|`|\*(?=\S))")
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


def _strip_md(text: str) -> str:
    return _MD_INLINE.sub("", _MD_LINK.sub(r"\1", text)).strip()


def clean_markdown(text: str) -> str:
    return "\n".join(_strip_md(line) for line in text.splitlines())


class _HTMLToSections(HTMLParser):
    _SKIP = frozenset({"script", "style", "noscript", "template", "svg", "nav", "footer", "head"})
    _BLOCK = frozenset(
        {"p", "div", "li", "br", "tr", "section", "article", "blockquote", "pre", "table",
         "ul", "ol", "dd", "dt", "main", "header"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.canonical = ""
        self.sections: list[Section] = []
        self._stack: list[tuple[int, str]] = []
        self._buf: list[str] = []
        self._skip = 0
        self._in_title = False
        self._heading_level = 0
        self._heading: list[str] = []
        self._h1_seen = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag == "link" and dict(attrs).get("rel") == "canonical":
            self.canonical = dict(attrs).get("href") or ""
        if tag in self._SKIP:
            self._skip += 1
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self._flush()
            self._heading_level = int(tag[1])
            self._heading = []
        elif tag in self._BLOCK:
            self._buf.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456" and self._heading_level:
            heading = " ".join("".join(self._heading).split())
            level, self._heading_level = self._heading_level, 0
            if not heading:
                return
            if level == 1 and not self._h1_seen and not self.sections:
                self._h1_seen = True
                self.title = self.title or heading
                return
            while self._stack and self._stack[-1][0] >= level:
                self._stack.pop()
            self._stack.append((level, heading))
        elif tag in self._BLOCK:
            self._buf.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title = (self.title + data).strip()
        elif self._skip:
            return
        elif self._heading_level:
            self._heading.append(data)
        else:
            self._buf.append(data)

    def _flush(self) -> None:
        raw = "".join(self._buf)
        self._buf = []
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n?", raw)]
        text = "\n\n".join(p for p in paragraphs if p)
        if text:
            self.sections.append(Section(tuple(h for _, h in self._stack), text))

    def close(self) -> None:
        super().close()
        self._flush()


def parse(content: str, fmt: str) -> Parsed:
    if fmt == "html":
        parser = _HTMLToSections()
        parser.feed(content)
        parser.close()
        return Parsed(parser.title, parser.canonical, tuple(parser.sections), {})
    meta, body = split_front_matter(content)
    if fmt == "markdown":
        title, sections = markdown_sections(body)
        sections = [Section(s.heading_path, clean_markdown(s.text)) for s in sections]
    else:
        title, text = "", body.strip()
        sections = [Section((), text)] if text else []
    return Parsed(meta.get("title") or title, meta.get("url", ""), tuple(sections), meta)


# ---------------------------------------------------------------------------------------------
# Chunking

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def _units(text: str) -> list[str]:
    """Sentences (or paragraphs when they are short), the atoms a chunk is built from."""
    units: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para:
            continue
        units.extend(s for s in _SENTENCE_END.split(para) if s)
    return units


def _split_long(unit: str, max_words: int) -> list[str]:
    tokens = unit.split()
    return [" ".join(tokens[i : i + max_words]) for i in range(0, len(tokens), max_words)]


def chunk_section(
    text: str, max_words: int = MAX_WORDS, overlap_words: int = OVERLAP_WORDS
) -> list[str]:
    """Windows of whole sentences of at most `max_words`; consecutive windows share about
    `overlap_words` of trailing sentences so an answer spanning a boundary is in one chunk."""
    units: list[str] = []
    for unit in _units(text):
        units.extend(_split_long(unit, max_words) if len(unit.split()) > max_words else [unit])
    sizes = [len(u.split()) for u in units]
    chunks: list[str] = []
    start = 0
    while start < len(units):
        end, total = start, 0
        while end < len(units) and (total + sizes[end] <= max_words or end == start):
            total += sizes[end]
            end += 1
        chunks.append(" ".join(units[start:end]))
        if end >= len(units):
            break
        # Step back over trailing sentences worth about `overlap_words`, always advancing.
        back, overlap = end, 0
        while back - 1 > start and overlap + sizes[back - 1] <= overlap_words:
            back -= 1
            overlap += sizes[back]
        start = back
    # A short tail is folded into the previous window rather than indexed on its own.
    if len(chunks) > 1 and len(chunks[-1].split()) < MIN_WORDS:
        tail = chunks.pop()
        if tail not in chunks[-1]:
            chunks[-1] = chunks[-1] + " " + tail
    return chunks


# ---------------------------------------------------------------------------------------------
# Near-duplicates

SHINGLE = 4
NEAR_DUP_JACCARD = 0.85
# MinHash with LSH banding: 32 hashes in 8 bands of 4. Two texts of Jaccard 0.85 share a band
# with probability 0.997, two of Jaccard 0.3 with 0.06; candidates are then confirmed on the
# estimated Jaccard (share of equal hashes), so no shingle sets are kept in memory.
_HASHES, _BAND_ROWS = 32, 4
_rng = np.random.default_rng(20240601)
_MULT = (_rng.integers(1, 2**63 - 1, _HASHES, dtype=np.int64).astype(np.uint64) << np.uint64(1)) \
    | np.uint64(1)
_ADD = _rng.integers(0, 2**63 - 1, _HASHES, dtype=np.int64).astype(np.uint64)


_P = np.array([0x100000001B3 ** k % 2**64 for k in (3, 2, 1, 0)], dtype=np.uint64)


def signature(text: str) -> npt.NDArray[np.uint64] | None:
    return signature_of_words(words(text))


def signature_of_words(ws: Sequence[str]) -> npt.NDArray[np.uint64] | None:
    """MinHash signature of the word 4-shingles; None for a text without words. Uses
    Python's per-process string hash: signatures are only compared within one process."""
    if not ws:
        return None
    h = np.fromiter(map(hash, ws), dtype=np.int64, count=len(ws)).view(np.uint64)
    with np.errstate(over="ignore"):
        if len(h) >= SHINGLE:
            # Rolling polynomial hash of each window of SHINGLE word hashes.
            sh = h[: len(h) - 3] * _P[0] + h[1 : len(h) - 2] * _P[1] + h[2 : len(h) - 1] * _P[2] \
                + h[3:] * _P[3]
        else:
            sh = np.array([int((h * _P[SHINGLE - len(h) :]).sum())], dtype=np.uint64)
        return (sh[None, :] * _MULT[:, None] + _ADD[:, None]).min(axis=1)


class DuplicateFilter:
    """Keeps the first of every group of near-identical texts (estimated Jaccard of word
    4-shingles at least `threshold`)."""

    def __init__(self, threshold: float = NEAR_DUP_JACCARD) -> None:
        self.threshold = threshold
        self._buckets: dict[bytes, list[int]] = {}
        self._kept: list[npt.NDArray[np.uint64]] = []

    def add(self, text: str, sig: npt.NDArray[np.uint64] | None = None) -> bool:
        """True if `text` is new (and now remembered), False if it nearly repeats a kept one
        or has no words. `sig` may pass a precomputed `signature(text)`."""
        if sig is None:
            sig = signature(text)
            if sig is None:
                return False
        keys = [
            bytes([b]) + sig[b * _BAND_ROWS : (b + 1) * _BAND_ROWS].tobytes()
            for b in range(_HASHES // _BAND_ROWS)
        ]
        seen: set[int] = set()
        for key in keys:
            for idx in self._buckets.get(key, ()):
                if idx not in seen:
                    seen.add(idx)
                    if float((self._kept[idx] == sig).mean()) >= self.threshold:
                        return False
        idx = len(self._kept)
        self._kept.append(sig)
        for key in keys:
            self._buckets.setdefault(key, []).append(idx)
        return True


def dedupe(texts: Iterable[str], threshold: float = NEAR_DUP_JACCARD) -> list[int]:
    """Indexes of the texts to keep, in order."""
    f = DuplicateFilter(threshold)
    return [i for i, t in enumerate(texts) if f.add(t)]


def slug(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    s = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")
    if not s:
        s = "doc-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return s[:120]


def content_id(doc_id: str, heading_path: Sequence[str], text: str) -> str:
    digest = hashlib.sha1("\x1f".join((*heading_path, text)).encode()).hexdigest()[:16]
    return f"{doc_id}:{digest}"
