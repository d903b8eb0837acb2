"""moto's S3 server on 127.0.0.1 for the ``s3://`` tests: started and stopped by the ``s3`` fixture.

The fixture yields :class:`S3`: ``url`` (the endpoint), ``env`` (what a subprocess needs: the endpoint, fake
credentials, a region, dead proxies so that nothing can leave the machine), ``client`` (boto3, to put and
inspect objects) and ``put_folder``. The server keeps no state between tests (one server per test).
``s3_auth`` is the same server checking every request's signature against a real IAM user's key.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DEAD_PROXY = "http://127.0.0.1:9"
BUCKET = "weights"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3:
    url: str
    env: dict[str, str]
    client: Any

    def put_folder(
        self, folder: Path, prefix: str, *, multipart: set[str] | None = None, part_size: int = 5 * 2**20
    ) -> None:
        """Every file of ``folder`` under ``s3://weights/<prefix>/``; the ``multipart`` names as multipart uploads."""
        for p in sorted(folder.iterdir()):
            key = f"{prefix}/{p.name}"
            if p.name in (multipart or set()):
                from boto3.s3.transfer import TransferConfig

                cfg = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)
                self.client.upload_file(str(p), BUCKET, key, Config=cfg)
            else:
                self.client.put_object(Bucket=BUCKET, Key=key, Body=p.read_bytes())


def _reset(url: str) -> None:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    opener.open(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=30).close()


def _user_key(url: str) -> tuple[str, str]:
    """An IAM user allowed everything, and its access key (made by the server's first, unauthenticated calls)."""
    import json

    import boto3

    iam = boto3.client(
        "iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup"
    )
    iam.create_user(UserName="llmkit")
    allow = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="llmkit", PolicyName="all", PolicyDocument=json.dumps(allow))
    key = iam.create_access_key(UserName="llmkit")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture
def s3() -> Iterator[S3]:
    yield from _serve(auth=False)


@pytest.fixture
def s3_auth() -> Iterator[S3]:
    """The server checking signatures: ``env`` holds a real user's key, so a wrong secret is refused."""
    yield from _serve(auth=True)


def _serve(*, auth: bool) -> Iterator[S3]:
    import boto3
    from moto import settings
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    before = settings.INITIAL_NO_AUTH_ACTION_COUNT
    from moto.core.responses import ActionAuthenticatorMixin

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 3 if auth else float("inf")  # the 3 calls of _user_key
    ActionAuthenticatorMixin.request_count = 0  # moto counts those calls per process, across servers
    server.start()
    url = f"http://127.0.0.1:{port}"
    _reset(url)  # moto keeps its buckets in this process: start each test empty
    key_id, secret = _user_key(url) if auth else ("testing", "testing")
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": key_id,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "HTTP_PROXY": DEAD_PROXY,
        "HTTPS_PROXY": DEAD_PROXY,
        "NO_PROXY": "127.0.0.1",
    }
    try:
        client = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        yield S3(url, env, client)
    finally:
        server.stop()
        settings.INITIAL_NO_AUTH_ACTION_COUNT = before
