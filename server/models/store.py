"""Registered ONNX models on local disk: one file per model, metadata in SQLite.

The same durability rules as pools (``store.py``): an upload is written to a
temp file as it arrives (hashed on the way, so the digest costs no second
read), checked, fsync'd and renamed into place, and only becomes a model when
the SQLite row that references it commits. ``kill -9`` at any moment leaves the
model either registered in full or absent; files no row references are swept at
start-up. Models have their own SQLite file, so they never contend with pool
writes for its lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from assay.vocab.errors import AlreadyExists, InvalidInput, NotFound, ResourceExhausted

from ..pools.durable import fsync_dir
from .onnx_safety import GraphInput, ModelSignature

MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: Largest model accepted by default: a model is parsed and checked in memory.
DEFAULT_MAX_MODEL_BYTES = 256 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT PRIMARY KEY,
    uid TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    create_time REAL NOT NULL,
    signature TEXT NOT NULL,
    bindings TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class ModelInfo:
    """A registered model: what was declared, what was read from the graph, where it lives.

    ``uid`` is unique per registration, so caches keyed by it never serve the
    results of a deleted model to one re-registered under the same id.
    """

    model_id: str
    uid: str
    sha256: str
    size_bytes: int
    create_time: float
    signature: ModelSignature
    bindings: tuple[tuple[str, str], ...]  # (role, output name) in declared order


def check_model_id(model_id: str, field: str = "model_id") -> str:
    """Raise ``InvalidInput`` unless ``model_id`` has the documented form."""
    if not MODEL_ID.match(model_id or ""):
        raise InvalidInput(
            f"{field} {model_id!r} is not a valid model id: 1-63 characters of [a-z0-9._-], "
            "starting with a letter or digit", field=field)
    return model_id


class ModelStore:
    """Durable models under ``data_dir/models``; safe for concurrent use from threads."""

    def __init__(self, data_dir: str | os.PathLike, *,
                 max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
                 min_free_bytes: int = 64 << 20):
        self.data_dir = Path(data_dir)
        self.models_dir = self.data_dir / "models"
        self.tmp_dir = self.models_dir / "tmp"
        self.max_model_bytes = max_model_bytes
        self.min_free_bytes = min_free_bytes
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.data_dir / "models.sqlite", check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._sweep()

    def _sweep(self) -> None:
        """Remove what a crash left behind: temp uploads and files no row references."""
        for entry in self.tmp_dir.iterdir():
            entry.unlink(missing_ok=True)
        live = {f"{row[0]}.onnx" for row in self._db.execute("SELECT uid FROM models")}
        for entry in self.models_dir.iterdir():
            if entry.is_file() and entry.name not in live:
                entry.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def path(self, info: ModelInfo) -> Path:
        return self.models_dir / f"{info.uid}.onnx"

    def read(self, info: ModelInfo) -> bytes:
        """The model file's bytes (checked at registration; the digest is not re-verified)."""
        return self.path(info).read_bytes()

    # -- metadata ----------------------------------------------------------------------

    @staticmethod
    def _info(row: tuple) -> ModelInfo:
        model_id, uid, sha, size, ctime, signature, bindings = row
        sig = json.loads(signature)
        if "inputs" in sig:
            inputs = tuple(GraphInput(n, d, tuple(s), a) for n, d, s, a in sig["inputs"])
        else:  # registered when models had exactly one input, fed from model_inputs
            inputs = (GraphInput(sig["input_name"], sig["input_dtype"],
                                 tuple(sig["input_shape"]), "model_inputs"),)
        return ModelInfo(
            model_id, uid, sha, size, ctime,
            ModelSignature(inputs, dict(sig["outputs"]), sig["opset"], sig["dropout_count"]),
            tuple((r, n) for r, n in json.loads(bindings)))

    def get(self, model_id: str, field: str = "model_id") -> ModelInfo:
        check_model_id(model_id, field)
        with self._lock:
            row = self._db.execute("SELECT * FROM models WHERE model_id = ?",
                                   (model_id,)).fetchone()
        if row is None:
            raise NotFound(f"model {model_id!r} does not exist; register it with RegisterModel",
                           field=field, reason="MODEL_NOT_FOUND")
        return self._info(row)

    def list(self, after: str = "", limit: int = 100) -> list[ModelInfo]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM models WHERE model_id > ? ORDER BY model_id "
                                    "LIMIT ?", (after, limit)).fetchall()
        return [self._info(r) for r in rows]

    def delete(self, model_id: str) -> ModelInfo:
        """Delete a model; returns what it was (so callers can drop its cached results)."""
        info = self.get(model_id)
        with self._lock:
            self._db.execute("DELETE FROM models WHERE model_id = ?", (model_id,))
        self.path(info).unlink(missing_ok=True)
        return info

    # -- uploads -----------------------------------------------------------------------

    def begin_upload(self, model_id: str, size_bytes: int, sha256: str) -> ModelUpload:
        """Check an upload's header and open its temp file; nothing is received before."""
        check_model_id(model_id, "header.model_id")
        sha256 = (sha256 or "").lower()
        if not _SHA256.match(sha256):
            raise InvalidInput("header.sha256 must be the 64 hex digits of the file's SHA-256",
                               field="header.sha256")
        if size_bytes <= 0:
            raise InvalidInput("header.size_bytes must be the file's size, > 0",
                               field="header.size_bytes")
        if self.max_model_bytes and size_bytes > self.max_model_bytes:
            raise ResourceExhausted(
                f"the model is {size_bytes} bytes, over the server's limit of "
                f"{self.max_model_bytes}", field="header.size_bytes", reason="MODEL_TOO_LARGE")
        with self._lock:
            taken = self._db.execute("SELECT 1 FROM models WHERE model_id = ?",
                                     (model_id,)).fetchone()
        if taken:
            raise AlreadyExists(f"model {model_id!r} already exists; delete it first or use "
                                "another id", field="header.model_id")
        free = shutil.disk_usage(self.data_dir).free
        if size_bytes + self.min_free_bytes > free:
            raise ResourceExhausted(f"the data directory has {free} bytes free; this model "
                                    f"needs {size_bytes} and {self.min_free_bytes} must stay "
                                    "free", reason="DISK_FULL")
        return ModelUpload(self, model_id, size_bytes, sha256)

    def _commit(self, upload: ModelUpload, signature: ModelSignature,
                bindings: tuple[tuple[str, str], ...]) -> ModelInfo:
        uid = uuid.uuid4().hex
        final = self.models_dir / f"{uid}.onnx"
        os.replace(upload.tmp, final)
        fsync_dir(self.models_dir)
        sig = {"inputs": [[i.name, i.dtype, list(i.shape), i.array] for i in signature.inputs],
               "outputs": signature.outputs, "opset": signature.opset,
               "dropout_count": signature.dropout_count}
        row = (upload.model_id, uid, upload.sha256, upload.size_bytes, time.time(),
               json.dumps(sig), json.dumps([list(b) for b in bindings]))
        with self._lock:
            try:
                self._db.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?)", row)
            except sqlite3.IntegrityError:
                final.unlink(missing_ok=True)
                raise AlreadyExists(f"model {upload.model_id!r} was registered by another "
                                    "upload meanwhile", field="header.model_id") from None
        return self._info(row)


class ModelUpload:
    """One RegisterModel stream, written to a temp file and hashed as it arrives."""

    def __init__(self, store: ModelStore, model_id: str, size_bytes: int, sha256: str):
        self.store = store
        self.model_id = model_id
        self.size_bytes = size_bytes
        self.sha256 = sha256
        self.received = 0
        self._hash = hashlib.sha256()
        self.tmp = store.tmp_dir / f"{uuid.uuid4().hex}.onnx"
        self._file = open(self.tmp, "wb")

    def write(self, data: bytes) -> None:
        """Append one chunk; more bytes than the header declared is INVALID_ARGUMENT."""
        if self.received + len(data) > self.size_bytes:
            raise InvalidInput(f"the stream carries more than the {self.size_bytes} bytes "
                               "header.size_bytes declares", field="chunk", reason="OVERRUN")
        self._file.write(data)
        self._hash.update(data)
        self.received += len(data)

    def finish(self) -> bytes:
        """Check size and digest, make the file durable, and return its bytes for checking."""
        if self.received != self.size_bytes:
            raise InvalidInput(
                f"the stream ended after {self.received} of {self.size_bytes} bytes: the "
                "upload was truncated and nothing was stored", field="chunk", reason="TRUNCATED")
        digest = self._hash.hexdigest()
        if digest != self.sha256:
            raise InvalidInput(
                f"the received bytes have SHA-256 {digest}, not the declared {self.sha256}: "
                "the upload was corrupted and nothing was stored", field="header.sha256",
                reason="DIGEST_MISMATCH")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self.tmp.read_bytes()

    def commit(self, signature: ModelSignature,
               bindings: tuple[tuple[str, str], ...]) -> ModelInfo:
        """Publish the checked model: rename into place, then the SQLite row commits it."""
        return self.store._commit(self, signature, bindings)

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)
