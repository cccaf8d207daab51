"""Ingestion as background jobs: never in a chat request's path, observable by id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from retrieval.base import Retriever
from retrieval.ingest import FORMATS, ChunkIndexer, SourceDocument, ingest_documents
from warmline.errors import BadRequest, NotFound, TooLarge, WarmlineError
from warmline.store.base import Store

log = logging.getLogger("warmline.retrieval.jobs")

MAX_DOCUMENT_CHARS = 2_000_000
MAX_DOCUMENTS = 1000


def sources_from_json(payload: Any) -> list[SourceDocument]:
    """Validate `{"documents": [{"name", "content", "format"?, "updated_at"?}]}` (or one such
    document object) from the HTTP API."""
    if isinstance(payload, Mapping) and "documents" in payload:
        items = payload["documents"]
    else:
        items = [payload]
    if not isinstance(items, list) or not items:
        raise BadRequest("documents must be a non-empty list")
    if len(items) > MAX_DOCUMENTS:
        raise TooLarge(f"at most {MAX_DOCUMENTS} documents per request")
    out: list[SourceDocument] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise BadRequest(f"documents[{i}] must be an object")
        name, content = item.get("name"), item.get("content")
        if not isinstance(name, str) or not name.strip():
            raise BadRequest(f"documents[{i}].name must be a non-empty string")
        if not isinstance(content, str):
            raise BadRequest(f"documents[{i}].content must be a string")
        if len(content) > MAX_DOCUMENT_CHARS:
            raise TooLarge(f"documents[{i}] is larger than {MAX_DOCUMENT_CHARS} characters")
        fmt = item.get("format")
        if fmt is not None and fmt not in FORMATS:
            raise BadRequest(f"documents[{i}].format must be one of {', '.join(FORMATS)}")
        updated = item.get("updated_at")
        if updated is not None and (isinstance(updated, bool)
                                    or not isinstance(updated, int | float)):
            raise BadRequest(f"documents[{i}].updated_at must be a number")
        out.append(SourceDocument(name, content, fmt, None if updated is None else float(updated)))
    return out


@dataclass
class _Job:
    id: str
    tenant: str
    documents: Sequence[SourceDocument]
    status: str = "queued"  # queued | running | done | failed | cancelled
    progress: int = 0
    total: int = 0
    doc_ids: list[str] = field(default_factory=list)
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    task: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "status": self.status,
            "progress": self.progress,
            "total": self.total,
            "doc_ids": list(self.doc_ids),
            "error": self.error,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }


class IngestJobs:
    """Runs ingestion jobs one at a time (they are CPU-heavy; chat latency matters more) and
    remembers the latest `keep` finished ones for status queries.

    A job is done once its documents are stored, which makes them searchable by BM25 on the
    next query; given the `retriever`, the job then asks it to refresh, so the dense vectors
    are embedded in the background right away. An `indexer` instead embeds every chunk inside
    the job (slower jobs, but dense-complete when done)."""

    def __init__(
        self,
        store: Store,
        retriever: Retriever | None = None,
        indexer: ChunkIndexer | None = None,
        keep: int = 500,
    ) -> None:
        self.store = store
        self.retriever = retriever
        self.indexer = indexer
        self.keep = keep
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._lock = asyncio.Lock()
        self._closed = False

    def start(self, tenant: str, documents: Sequence[SourceDocument]) -> str:
        if self._closed:
            raise WarmlineError("ingestion is shutting down")
        if not documents:
            raise BadRequest("nothing to ingest")
        job = _Job("job_" + secrets.token_urlsafe(9), tenant, list(documents))
        job.total = len(documents)
        job.task = asyncio.get_running_loop().create_task(self._run(job), name=f"ingest:{job.id}")
        self._jobs[job.id] = job
        self._trim()
        return job.id

    def status(self, job_id: str, tenant: str | None = None) -> dict[str, Any]:
        """A job's state; with `tenant`, another tenant's job is reported as not found."""
        job = self._jobs.get(job_id)
        if job is None or (tenant is not None and job.tenant != tenant):
            raise NotFound(f"no ingestion job {job_id!r}")
        return job.view()

    async def wait(self, job_id: str) -> dict[str, Any]:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no ingestion job {job_id!r}")
        if job.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(job.task)
        return job.view()

    async def _run(self, job: _Job) -> None:
        def progress(done: int, total: int) -> None:
            job.progress, job.total = done, total

        try:
            async with self._lock:
                job.status = "running"
                job.doc_ids = await ingest_documents(
                    self.store, job.tenant, job.documents, progress, self.indexer
                )
            job.status = "done"
            if self.retriever is not None:
                await self.retriever.refresh(job.tenant)
        except asyncio.CancelledError:
            job.status = "cancelled"
            raise
        except WarmlineError as exc:
            job.status, job.error = "failed", exc.message
        except Exception as exc:
            log.exception("ingestion job %s failed", job.id)
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.finished_at = time.time()
            job.documents = ()  # release the payload; only the summary is kept

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished_at is not None]
        for job in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[job.id]

    async def close(self) -> None:
        self._closed = True
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
