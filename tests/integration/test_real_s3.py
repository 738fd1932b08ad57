"""The S3 fixture is a real S3 server: the minio SDK works against it as against MinIO/AWS."""

from __future__ import annotations

import datetime as dt
import io
import urllib.request

import pytest
from minio import Minio
from minio.error import S3Error

from tests.services import S3Endpoint


def test_put_get_list_and_presigned_url(s3_endpoint: S3Endpoint) -> None:
    host = s3_endpoint.endpoint.split("://", 1)[1]
    client = Minio(
        host,
        access_key=s3_endpoint.access_key,
        secret_key=s3_endpoint.secret_key,
        secure=s3_endpoint.endpoint.startswith("https"),
    )
    bucket = "fixture-check"
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    payload = b"\x89PNG fake bytes for the round trip"
    client.put_object(
        bucket,
        "screens/a/1.png",
        io.BytesIO(payload),
        len(payload),
        content_type="image/png",
        metadata={"screen": "Home"},
    )
    client.put_object(bucket, "screens/b/2.png", io.BytesIO(b"x"), 1)

    assert client.get_object(bucket, "screens/a/1.png").read() == payload
    listed = [
        o.object_name for o in client.list_objects(bucket, prefix="screens/a/", recursive=True)
    ]
    assert listed == ["screens/a/1.png"]
    stat = client.stat_object(bucket, "screens/a/1.png")
    assert stat.size == len(payload)
    assert stat.metadata is not None
    assert stat.metadata["X-Amz-Meta-screen"] == "Home"

    url = client.presigned_get_object(bucket, "screens/a/1.png", expires=dt.timedelta(minutes=5))
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == payload


def test_bad_credentials_are_refused(s3_endpoint: S3Endpoint) -> None:
    host = s3_endpoint.endpoint.split("://", 1)[1]
    client = Minio(host, access_key="nobody", secret_key="wrong-secret", secure=False)
    with pytest.raises(S3Error) as refused:
        client.list_buckets()
    assert refused.value.code in {"InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch"}
