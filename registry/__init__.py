"""The model registry: the one owner of the model artifact.

`store.Registry` saves, lists, loads, promotes and rolls back versions in a folder;
`objectstore.ObjectRegistry` does the same on S3-compatible object storage; `open_registry`
picks one from MODEL_DIR (`s3://bucket/prefix` or a path). `meta.ModelMeta` is meta.json, typed
and validated; `models` is the model protocol (fit, score one row, score a matrix, importance)
with LightGBM and logistic regression behind it. Training writes through this package; the
server, monitoring, A/B and the audit read through it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from registry.objectstore import ObjectRegistry
    from registry.store import Registry

S3_SCHEME = "s3"
# S3's bucket naming rules (3-63 characters, lower case, digits, dots and hyphens)
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_model_dir(value: str | Path) -> Path | str:
    """MODEL_DIR as the registry understands it: a Path, or a normalised `s3://bucket[/prefix]`.

    ValueError with the reason for `s3://` without a bucket, a bad bucket name or another scheme.
    """
    if isinstance(value, Path):
        return value
    text = str(value).strip()
    if "://" not in text:
        if not text:
            raise ValueError("is empty; use a folder (var/models) or s3://bucket/prefix")
        return Path(text)
    scheme, rest = text.split("://", 1)
    if scheme.lower() != S3_SCHEME:
        raise ValueError(f"scheme {scheme!r} is not supported; use a folder (var/models) or "
                         "s3://bucket/prefix (S3 or an S3-compatible store: MinIO, R2)")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"{text!r} names no bucket; use s3://bucket/prefix")
    if not _BUCKET_RE.match(bucket):
        raise ValueError(f"{bucket!r} is not an S3 bucket name (3-63 characters: lower-case letters, digits, "
                         "dots, hyphens)")
    prefix = "/".join(part for part in prefix.split("/") if part)
    return f"{S3_SCHEME}://{bucket}/{prefix}" if prefix else f"{S3_SCHEME}://{bucket}"


def is_object_store(model_dir: str | Path) -> bool:
    return isinstance(model_dir, str) and model_dir.startswith(f"{S3_SCHEME}://")


def open_registry(model_dir: str | Path, cache_dir: str | Path | None = None) -> Registry | ObjectRegistry:
    """The registry MODEL_DIR names: ObjectRegistry for `s3://bucket/prefix`, else the folder Registry.

    `cache_dir` (object store only): where versions are downloaded; default MODEL_CACHE_DIR.
    """
    where = parse_model_dir(model_dir)
    if isinstance(where, Path):
        from registry.store import Registry

        return Registry(where)
    from registry.objectstore import ObjectRegistry

    if cache_dir is None:
        from stack.settings import get_settings

        cache_dir = get_settings().model_cache_dir
    return ObjectRegistry(where, Path(cache_dir))
