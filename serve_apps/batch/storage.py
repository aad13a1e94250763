"""Batch files, batch objects and job checkpoints on any fsspec filesystem.

Layout under the root: ``files/<id>.json`` (the file object) and ``files/<id>.jsonl`` (its content);
``batches/<id>/batch.json``; ``batches/<id>/parts/<seq>.part`` (finished results); ``batches/<id>/cancel``.

Why parts: object stores cannot append, and a job may be killed at any instant. Every flush writes one
new part under a temporary name and renames it into place, so a part is either wholly there or absent.
The set of line numbers in the parts *is* the checkpoint: a restarted job skips them, redoes whatever
was in flight (it was never recorded), and finalising merges the parts in input order.
"""

from __future__ import annotations

import heapq
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from typing import IO, Any

import fsspec

from serve_apps.batch.models import Batch, FileObject

PART_SEPARATOR = "\t"
OUTPUT, ERROR = "o", "e"


class Storage:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        # Several processes (router replicas, job actors) share the storage: a cached listing would
        # hide what the others wrote (s3fs caches listings per process by default).
        fs, root = fsspec.core.url_to_fs(os.path.expanduser(uri) if "://" not in uri else uri,
                                         use_listings_cache=False)
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = root.rstrip("/")
        for sub in ("files", "batches"):
            self.fs.makedirs(f"{self.root}/{sub}", exist_ok=True)

    # ------------------------------------------------------------------ plumbing

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _write_atomic(self, path: str, data: bytes) -> None:
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # a no-op on object stores
        tmp = f"{path}.tmp-{secrets.token_hex(4)}"
        with self.fs.open(tmp, "wb") as handle:
            handle.write(data)
        self.fs.mv(tmp, path)

    def _ls(self, path: str) -> list[str]:
        """Names under ``path``; none when it does not exist (object stores have no empty
        directories: a prefix with no objects is simply absent)."""
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []

    def _read_json(self, path: str) -> dict[str, Any] | None:
        # One whole read (one GET on object stores): a file object would check the object's ETag on
        # each ranged read and fail when a job replaced batch.json in between (s3fs FileExpired).
        try:
            return json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------------ files

    def save_file(self, meta: FileObject, source: IO[bytes] | None = None, chunk: int = 1 << 20) -> FileObject:
        """Copy ``source`` (streamed, never whole in memory) and then publish its metadata."""
        if source is not None:
            size = 0
            tmp = self._path("files", f"{meta.id}.jsonl.tmp-{secrets.token_hex(4)}")
            with self.fs.open(tmp, "wb") as out:
                while block := source.read(chunk):
                    out.write(block)
                    size += len(block)
            self.fs.mv(tmp, self._path("files", f"{meta.id}.jsonl"))
            meta = meta.model_copy(update={"bytes": size})
        self._write_atomic(self._path("files", f"{meta.id}.json"), meta.stored())
        return meta

    def file_writer(self, file_id: str) -> IO[bytes]:
        return self.fs.open(self._path("files", f"{file_id}.jsonl"), "wb")

    def get_file(self, file_id: str) -> FileObject | None:
        if not _safe_id(file_id):
            return None
        data = self._read_json(self._path("files", f"{file_id}.json"))
        return FileObject.model_validate(data) if data is not None else None

    def file_ids(self) -> list[str]:
        """Every stored file id, newest first (ids are time-ordered)."""
        return sorted((n[:-5] for n in self._ls(self._path("files")) if n.endswith(".json")), reverse=True)

    def open_file(self, file_id: str) -> IO[bytes]:
        return self.fs.open(self._path("files", f"{file_id}.jsonl"), "rb")

    def delete_file(self, file_id: str) -> bool:
        if self.get_file(file_id) is None:
            return False
        self.fs.rm(self._path("files", f"{file_id}.json"))
        try:
            self.fs.rm(self._path("files", f"{file_id}.jsonl"))
        except FileNotFoundError:
            pass
        return True

    # ------------------------------------------------------------------ batches

    def save_batch(self, batch: Batch) -> None:
        self._write_atomic(self._path("batches", batch.id, "batch.json"), batch.stored())

    def get_batch(self, batch_id: str) -> Batch | None:
        if not _safe_id(batch_id):
            return None
        data = self._read_json(self._path("batches", batch_id, "batch.json"))
        return Batch.model_validate(data) if data is not None else None

    def batch_ids(self) -> list[str]:
        """Every stored batch id, newest first."""
        return sorted((n for n in self._ls(self._path("batches")) if n.startswith("batch_")), reverse=True)

    def batches_using(self, file_id: str) -> list[Batch]:
        """Every batch whose input, output or error file is ``file_id``."""
        found = []
        for batch_id in self.batch_ids():
            batch = self.get_batch(batch_id)
            if batch is not None and file_id in (batch.input_file_id, batch.output_file_id, batch.error_file_id):
                found.append(batch)
        return found

    def request_cancel(self, batch_id: str) -> None:
        self._write_atomic(self._path("batches", batch_id, "cancel"), b"1")

    def cancel_requested(self, batch_id: str) -> bool:
        return self.fs.exists(self._path("batches", batch_id, "cancel"))

    # ------------------------------------------------------------------ checkpoint parts

    def write_part(self, batch_id: str, seq: int, rows: Iterable[tuple[int, str, str]]) -> None:
        """Record finished results ``(line index, OUTPUT|ERROR, json line)``, sorted by index."""
        text = "".join(f"{index}{PART_SEPARATOR}{kind}{PART_SEPARATOR}{line}\n" for index, kind, line in sorted(rows))
        self._write_atomic(self._path("batches", batch_id, "parts", f"{seq:08d}.part"), text.encode())

    def part_paths(self, batch_id: str) -> list[str]:
        directory = self._path("batches", batch_id, "parts")
        return sorted(f"{directory}/{name}" for name in self._ls(directory) if name.endswith(".part"))

    def read_part(self, path: str) -> Iterator[tuple[int, str, str]]:
        with self.fs.open(path, "rt", encoding="utf-8") as handle:
            for raw in handle:
                index, kind, line = raw.rstrip("\n").split(PART_SEPARATOR, 2)
                yield int(index), kind, line

    def merged_results(self, batch_id: str) -> Iterator[tuple[int, str, str]]:
        """Every recorded result in input order, streamed (one open part at a time per part)."""
        return heapq.merge(*(self.read_part(p) for p in self.part_paths(batch_id)))


def _safe_id(value: str) -> bool:
    """Ids become path names: refuse anything that could climb out of the root."""
    return bool(value) and len(value) <= 128 and all(c.isalnum() or c in "-_" for c in value)
