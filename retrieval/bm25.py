"""Okapi BM25 over a precomputed term-major sparse matrix (CSR over terms, numpy only).

Scores equal `rank_bm25.BM25Okapi` (same k1, b, epsilon floor on negative idf) term by term,
because each posting stores the exact expression BM25Okapi evaluates for that (term, doc), and
query terms are added in the same order. Only documents that contain a term are touched, so a
query costs the length of its posting lists instead of the size of the corpus.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class BM25Index:
    def __init__(
        self,
        corpus: Sequence[Sequence[str]],
        k1: float = 1.5,
        b: float = 0.75,
        epsilon: float = 0.25,
    ) -> None:
        self.k1 = k1
        self.b = b
        self.epsilon = epsilon
        self.size = len(corpus)
        doc_len = np.fromiter((len(d) for d in corpus), dtype=np.float64, count=self.size)
        self.avgdl = float(doc_len.sum()) / self.size if self.size else 0.0

        # term -> list of (doc, tf); built in one pass, then packed into flat arrays.
        postings: dict[str, list[tuple[int, int]]] = {}
        for i, doc in enumerate(corpus):
            freqs: dict[str, int] = {}
            for word in doc:
                freqs[word] = freqs.get(word, 0) + 1
            for word, tf in freqs.items():
                postings.setdefault(word, []).append((i, tf))

        self.idf: dict[str, float] = {}
        idf_sum = 0.0
        negative: list[str] = []
        for word, plist in postings.items():
            df = len(plist)
            idf = math.log(self.size - df + 0.5) - math.log(df + 0.5)
            self.idf[word] = idf
            idf_sum += idf
            if idf < 0:
                negative.append(word)
        self.average_idf = idf_sum / len(self.idf) if self.idf else 0.0
        eps = self.epsilon * self.average_idf
        for word in negative:
            self.idf[word] = eps

        self.vocab: dict[str, int] = {}
        indptr = [0]
        doc_parts: list[IntArray] = []
        weight_parts: list[FloatArray] = []
        norm: FloatArray = (1 - b + b * doc_len / self.avgdl) if self.avgdl else doc_len
        for word, plist in postings.items():
            self.vocab[word] = len(self.vocab)
            docs = np.fromiter((p[0] for p in plist), dtype=np.int64, count=len(plist))
            tfs = np.fromiter((p[1] for p in plist), dtype=np.float64, count=len(plist))
            # Same expression and operation order as BM25Okapi.get_scores.
            w = self.idf[word] * (tfs * (k1 + 1) / (tfs + k1 * norm[docs]))
            doc_parts.append(docs)
            weight_parts.append(w)
            indptr.append(indptr[-1] + len(plist))
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.docs = np.concatenate(doc_parts) if doc_parts else np.zeros(0, dtype=np.int64)
        self.weights = (
            np.concatenate(weight_parts) if weight_parts else np.zeros(0, dtype=np.float64)
        )
        # Bound of one term's contribution, used to normalize scores into [-1, 1]. (Okapi idf
        # is negative for terms in more than half the documents, which tiny KBs hit often.)
        self._max_term = {w: abs(v) * (k1 + 1) for w, v in self.idf.items()}

    def scores(self, query: Sequence[str]) -> FloatArray:
        """Score of every document, like BM25Okapi.get_scores (repeated terms count again)."""
        out = np.zeros(self.size, dtype=np.float64)
        for term in query:
            t = self.vocab.get(term)
            if t is None:
                continue
            lo, hi = self.indptr[t], self.indptr[t + 1]
            # Each document appears once per term's posting list, so fancy-index += is exact.
            out[self.docs[lo:hi]] += self.weights[lo:hi]
        return out

    def candidates(self, query: Sequence[str]) -> IntArray:
        """Documents that contain at least one query term (the only ones with a score)."""
        return np.flatnonzero(self.matched(query)).astype(np.int64)

    def matched(self, query: Sequence[str]) -> npt.NDArray[np.bool_]:
        """Mask of the documents containing at least one query term."""
        out = np.zeros(self.size, dtype=bool)
        for term in set(query):
            t = self.vocab.get(term)
            if t is not None:
                out[self.docs[self.indptr[t] : self.indptr[t + 1]]] = True
        return out

    def max_score(self, query: Sequence[str]) -> float:
        """A bound of any document's absolute score for `query` (for normalization)."""
        return sum(self._max_term.get(term, 0.0) for term in query)
