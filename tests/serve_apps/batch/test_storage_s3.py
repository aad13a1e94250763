"""Batch storage on ``s3://`` through fsspec/s3fs, against moto's S3 server (a real HTTP implementation
of the S3 API) on 127.0.0.1: the storage layer itself, then a whole batch through a router whose
storage is a bucket."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from launchers.local import free_port
from serve_apps.batch.models import Batch, FileObject, now
from serve_apps.batch.storage import ERROR, OUTPUT, Storage

# moto accepts any credentials; these are not secrets
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            assert server.poll() is None and time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.1)
    saved = {key: os.environ.get(key) for key in [*S3_ENV, "AWS_ENDPOINT_URL_S3"]}
    os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL_S3": url})  # what botocore (under s3fs) reads
    try:
        yield url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        server.wait(10)


def boto3_client(endpoint: str):
    """A client of its own (not fsspec's): it plays another process reading or writing the bucket."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=S3_ENV["AWS_DEFAULT_REGION"],
                        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])


def objects(endpoint: str, bucket: str) -> list[str]:
    """Keys in ``bucket``, listed straight from the server."""
    return [item["Key"] for item in boto3_client(endpoint).list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_storage_layer_on_s3(s3_server):
    storage = Storage("s3://batch-unit/prefix")
    assert storage.batch_ids() == [] and storage.file_ids() == [] and storage.part_paths("batch_none") == []
    meta = storage.save_file(FileObject(id="file-abc", bytes=0, created_at=now(), filename="in.jsonl", purpose="batch"),
                             io.BytesIO(b'{"line": 1}\n' * 1000), chunk=4096)
    assert meta.bytes == 12_000 and storage.get_file("file-abc") == meta
    with storage.open_file("file-abc") as stream:
        assert stream.read() == b'{"line": 1}\n' * 1000
    batch = Batch(id="batch_xyz", endpoint="/v1/chat/completions", input_file_id="file-abc", completion_window="24h",
                  status="in_progress", created_at=now())
    storage.save_batch(batch)
    storage.write_part(batch.id, 2, [(3, OUTPUT, "c"), (1, ERROR, "b")])
    storage.write_part(batch.id, 1, [(0, OUTPUT, "a"), (2, OUTPUT, "x")])
    assert list(storage.merged_results(batch.id)) == [(0, OUTPUT, "a"), (1, ERROR, "b"), (2, OUTPUT, "x"), (3, OUTPUT, "c")]
    assert storage.batch_ids() == ["batch_xyz"] and len(storage.part_paths(batch.id)) == 2
    # what another process (a router replica, a job actor) writes is seen at once: no stale listing
    other = boto3_client(s3_server)
    other.put_object(Bucket="batch-unit", Key="prefix/batches/batch_other/batch.json", Body=b"{}")
    other.put_object(Bucket="batch-unit", Key="prefix/batches/batch_xyz/parts/00000003.part", Body=b"4\to\td\n")
    other.put_object(Bucket="batch-unit", Key="prefix/batches/batch_xyz/cancel", Body=b"1")
    assert storage.batch_ids() == ["batch_xyz", "batch_other"] and len(storage.part_paths(batch.id)) == 3
    assert storage.cancel_requested(batch.id)
    keys = objects(s3_server, "batch-unit")
    assert "prefix/batches/batch_xyz/parts/00000001.part" in keys and "prefix/files/file-abc.jsonl" in keys
    assert not [key for key in keys if ".tmp-" in key]  # parts are renamed into place, no leftovers
    assert storage.delete_file("file-abc") and storage.get_file("file-abc") is None


def test_a_batch_read_while_its_job_rewrites_it(s3_server):
    """The router reads batch.json while the job replaces it (every checkpoint): never an error."""
    reader, writer = Storage("s3://batch-race/p"), Storage("s3://batch-race/p")
    batch = Batch(id="batch_race", endpoint="/v1/chat/completions", input_file_id="file-x", completion_window="24h",
                  status="in_progress", created_at=now())
    writer.save_batch(batch)
    stop = threading.Event()

    def rewrite() -> None:
        count = 0
        while not stop.is_set():
            count += 1
            writer.save_batch(batch.model_copy(update={"metadata": {"n": str(count)}}))

    thread = threading.Thread(target=rewrite)
    thread.start()
    try:
        seen = {reader.get_batch("batch_race").status for _ in range(60)}
    finally:
        stop.set()
        thread.join()
    assert seen == {"in_progress"}


@pytest.mark.engine
def test_a_batch_through_the_router_with_storage_in_a_bucket(s3_server, serve_stack, tmp_path):
    from tests.serve_apps.batch.test_batch_api import jsonl, line, upload, wait_done
    from tests.serve_apps.batch.test_cluster_kill import router_cluster

    env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": s3_server}
    cluster, url = router_cluster("s3://batch-e2e/jobs", serve_stack.base_url, tmp_path, env=env)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        lines = [line(f"s{i}", f"bucket {i}", max_tokens=8) for i in range(40)]
        lines.insert(3, line("bad-model", "x", model="no-such-model"))
        batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
                                      completion_window="24h")
        finished = wait_done(client, batch.id, timeout=240)
        output, errors = jsonl(client, finished.output_file_id), jsonl(client, finished.error_file_id)
    finally:
        cluster.stop()
    assert finished.status == "completed"
    assert [o["custom_id"] for o in output] == [f"s{i}" for i in range(40)]
    assert [e["custom_id"] for e in errors] == ["bad-model"] and errors[0]["response"]["status_code"] == 404
    keys = objects(s3_server, "batch-e2e")
    assert f"jobs/batches/{batch.id}/batch.json" in keys
    assert f"jobs/files/{finished.output_file_id}.jsonl" in keys
