"""moto's S3 server as a real S3 endpoint on 127.0.0.1: a subprocess on a free port, stopped by PID.

The platform talks to it exactly as to AWS or MinIO: through the standard AWS environment
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`), which
`S3Server.env` holds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from processes import free_ports

BUCKET = "mfd-test"


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    process: subprocess.Popen[bytes]

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client (boto3, pyarrow, Ray Train) here."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **_boto_kwargs(self.env))

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under `prefix`, sorted (the store as it is, not as we wrote it)."""
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _boto_kwargs(env: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


def start_s3(log_dir: Path, bucket: str = BUCKET, timeout: float = 60.0) -> S3Server:
    """Start `python -m moto.server` on 127.0.0.1, wait until it answers, create `bucket`."""
    (port,) = free_ports(1)
    log = (log_dir / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MOTO_PORT": str(port)},
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited ({proc.returncode}); see {log_dir}/moto.log")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                stop_s3(proc)
                raise RuntimeError(
                    f"moto server did not answer on {endpoint} in {timeout} s"
                ) from None
            time.sleep(0.2)
    server = S3Server(endpoint, bucket, proc)
    server.client().create_bucket(Bucket=bucket)
    return server


def stop_s3(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM our moto server (by its PID), SIGKILL it after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
