"""Turning files and API payloads into a document and its chunks, and storing them."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from retrieval.chunking import (
    DuplicateFilter,
    chunk_section,
    content_id,
    guess_format,
    parse,
    slug,
)
from warmline.errors import BadRequest
from warmline.models import Chunk, Document
from warmline.store.base import Store

FORMATS = ("text", "markdown", "html")
INGESTIBLE = (".md", ".markdown", ".mdx", ".txt", ".text", ".html", ".htm", ".xhtml")

Progress = Callable[[int, int], None]


class ChunkIndexer(Protocol):
    """Hooks around storing a document: the retriever embeds the chunks before they are
    stored (so the rebuild their version bump triggers finds vectors ready) and saves the
    vectors once the chunks exist."""

    async def before_store(self, tenant: str, chunks: Sequence[Chunk]) -> None: ...

    async def after_store(self, tenant: str, chunks: Sequence[Chunk]) -> None: ...


@dataclass(frozen=True)
class SourceDocument:
    """One document as submitted: a name (its stable identity), its text and format."""

    name: str
    content: str
    fmt: str | None = None
    updated_at: float | None = None
    label: str | None = None


def parse_document(
    tenant: str,
    name: str,
    content: str,
    fmt: str | None = None,
    updated_at: float | None = None,
    label: str | None = None,
) -> tuple[Document, list[Chunk]]:
    """Parse and chunk one document; `doc_id` derives from `name` only, so re-ingesting the
    same name replaces the old version. Near-duplicate chunks inside the document are dropped."""
    fmt = fmt or guess_format(name)
    if fmt not in FORMATS:
        raise BadRequest(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not name.strip():
        raise BadRequest("a document needs a name")
    updated = time.time() if updated_at is None else float(updated_at)
    parsed = parse(content, fmt)
    doc_id = slug(name)
    title = parsed.title or _title_from_name(name)
    lang = parsed.meta.get("lang") or parsed.meta.get("language") or "en"
    doc_type = parsed.meta.get("doc_type") or parsed.meta.get("type") or "article"
    document = Document(
        tenant=tenant,
        doc_id=doc_id,
        title=title,
        url=parsed.url,
        body=content,
        updated_at=updated,
        content_hash=hashlib.sha256(content.encode()).hexdigest(),
        lang=lang,
        doc_type=doc_type,
    )
    seen = DuplicateFilter()
    chunks: list[Chunk] = []
    ids: set[str] = set()
    for section in parsed.sections:
        for text in chunk_section(section.text):
            if not seen.add(" ".join((*section.heading_path, text))):
                continue
            # The title is part of what gets indexed, so a new title means new chunk ids.
            cid = content_id(doc_id, (title, *section.heading_path), text)
            if cid in ids:
                continue
            ids.add(cid)
            chunks.append(
                Chunk(
                    tenant=tenant,
                    doc_id=doc_id,
                    chunk_id=cid,
                    title=title,
                    url=parsed.url,
                    text=text,
                    heading_path=section.heading_path,
                    updated_at=updated,
                    lang=lang,
                    doc_type=doc_type,
                    label=label,
                )
            )
    return document, chunks


def _title_from_name(name: str) -> str:
    base = os.path.basename(name.replace("\\", "/"))
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    return stem.replace("-", " ").replace("_", " ").strip().capitalize() or name


def expand_paths(paths: Sequence[str]) -> list[str]:
    """Files as given, and the ingestible files under directories (sorted, recursive)."""
    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                out.extend(
                    os.path.join(root, f) for f in sorted(files) if f.lower().endswith(INGESTIBLE)
                )
        elif os.path.isfile(path):
            out.append(path)
        else:
            raise BadRequest(f"no such file or directory: {path}")
    return out


def _read_source(path: str) -> SourceDocument:
    with open(path, encoding="utf-8", errors="replace") as f:
        content = f.read()
    return SourceDocument(os.path.basename(path), content, None, os.path.getmtime(path))


async def ingest_documents(
    store: Store,
    tenant: str,
    documents: Sequence[SourceDocument],
    progress: Progress | None = None,
    indexer: ChunkIndexer | None = None,
) -> list[str]:
    """Parse (off the event loop), store each document atomically, and report progress in
    documents done out of the total. Returns the doc ids in order."""
    doc_ids: list[str] = []
    total = len(documents)
    if progress is not None:
        progress(0, total)
    for i, source in enumerate(documents):
        document, chunks = await asyncio.to_thread(
            parse_document,
            tenant,
            source.name,
            source.content,
            source.fmt,
            source.updated_at,
            source.label,
        )
        if indexer is not None:
            await indexer.before_store(tenant, chunks)
        await store.replace_document(document, chunks)
        if indexer is not None:
            await indexer.after_store(tenant, chunks)
        doc_ids.append(document.doc_id)
        if progress is not None:
            progress(i + 1, total)
    return doc_ids


async def ingest_paths(
    store: Store,
    tenant: str,
    paths: Sequence[str],
    progress: Progress | None = None,
    indexer: ChunkIndexer | None = None,
) -> list[str]:
    """Ingest files and directories (Markdown, HTML, plain text); returns the doc ids."""
    files = await asyncio.to_thread(expand_paths, paths)
    sources = [await asyncio.to_thread(_read_source, p) for p in files]
    return await ingest_documents(store, tenant, sources, progress, indexer)
