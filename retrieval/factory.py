"""Building the configured retriever."""

from __future__ import annotations

from retrieval.fusion import RankConfig
from retrieval.retriever import EmbedderFactory, KBRetriever
from warmline.config import Config
from warmline.store.base import Store

RETRIEVERS = ("bm25", "hybrid")


def build_retriever(
    config: Config,
    store: Store,
    embedder_factory: EmbedderFactory | None = None,
) -> KBRetriever:
    """`bm25`: lexical only, no model. `hybrid`: BM25 + dense; the model loads in the
    background on first use (or `retriever.start()`), and BM25 answers until it is ready."""
    if config.retriever not in RETRIEVERS:
        raise ValueError(
            f"unknown retriever {config.retriever!r}; expected one of {', '.join(RETRIEVERS)}"
        )
    model = config.embedding_model if config.retriever == "hybrid" else None
    return KBRetriever(
        store, embedding_model=model, embedder_factory=embedder_factory, rank=RankConfig()
    )
