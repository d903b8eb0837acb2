"""Remote outputs (``-o s3://``) against moto's S3 server on 127.0.0.1, through the real s3fs/boto3.

Each job runs as the console command in a subprocess whose proxies point at a closed local port. Outputs are
compared with the same job written to a local folder; a failed or killed run leaves nothing under the final
names, two runs on one output never both succeed, and the old output's objects are replaced only at the end.
"""

# ruff: noqa: F811  (the `s3` fixture is imported and taken as a test argument)
from __future__ import annotations

from s3_server import BUCKET, s3  # noqa: F401 (s3: the fixture)
from test_remote_sources import _model, _run


def _objects(s3, prefix: str) -> dict[str, bytes]:
    got = s3.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return {
        o["Key"][len(prefix) :]: s3.client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
        for o in got.get("Contents", [])
    }


def _pending(s3) -> list[str]:
    return [u["Key"] for u in s3.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


def test_sharded_output_matches_the_local_folder(s3, tmp_path):
    folder, _files = _model(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    ckpt = tmp_path / "m.ckpt"
    assert _run(["to-ckpt", str(folder), "-o", str(ckpt)], s3.env, work).returncode == 0
    args = ["from-ckpt", str(ckpt), "--config", str(folder / "config.json"), "--shard-size", "100KB"]
    r = _run([*args, "-o", f"s3://{BUCKET}/out/"], s3.env, work)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stderr
    assert _run([*args, "-o", str(tmp_path / "local")], s3.env, work).returncode == 0
    local = {p.name: p.read_bytes() for p in (tmp_path / "local").iterdir()}
    assert _objects(s3, "out/") == local
