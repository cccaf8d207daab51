"""Knowledge-base retrieval: ingestion, BM25 + dense indexes, fusion and calibrated confidence."""

from retrieval.base import Hit, RetrievalResult, Retriever

__all__ = ["Hit", "RetrievalResult", "Retriever"]
