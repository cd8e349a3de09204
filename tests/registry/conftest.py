"""Fixtures of the object-store registry tests: a real S3 API (moto's server) in its own process."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from tests.conftest import ROOT

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    """`python -m tests.registry.s3server` on a free port."""

    process: subprocess.Popen[bytes]
    url: str

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach it: boto3's own variables."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.url}

    def client(self):
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def bucket(self, prefix: str = "models") -> str:
        """A new bucket; the MODEL_DIR URL of `prefix` in it."""
        name = f"bms-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}/{prefix}"

    def pause(self) -> None:
        """SIGSTOP: the store hangs (connections are accepted by the kernel, never answered)."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_s3(log: Path) -> S3Server:
    with log.open("ab") as err:
        process = subprocess.Popen([sys.executable, "-m", "tests.registry.s3server"], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=err)
    line = process.stdout.readline().decode()
    if not line.startswith("port "):
        process.kill()
        raise AssertionError(f"the S3 server did not start: {line!r}; see {log}")
    return S3Server(process, f"http://127.0.0.1:{int(line.split()[1])}")


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> Iterator[S3Server]:
    """One S3 server for the session; each test takes its own bucket."""
    server = start_s3(tmp_path_factory.mktemp("s3") / "s3.log")
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch) -> S3Server:
    """This process's boto3 clients reach `s3`."""
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    return s3


@pytest.fixture(scope="session")
def versions(small_models):
    """Two trained (model, meta) pairs, oldest first: copied into each test's bucket."""
    registry, first, second = small_models
    return [registry.load(first), registry.load(second)]
