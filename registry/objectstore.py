"""The registry on S3-compatible object storage (MODEL_DIR=s3://bucket/prefix), with the folder's contract.

    s3://bucket/prefix/versions/<version>/model.joblib   uploaded first
    s3://bucket/prefix/versions/<version>/*.png          the plots, after it
    s3://bucket/prefix/versions/<version>/meta.json      uploaded last, create-only: the version exists
    s3://bucket/prefix/current                           JSON {version, seq, at, action, from, to, reason},
                                                         replaced only by a conditional write (If-Match)
    s3://bucket/prefix/history/<seq>.json                one create-only object per promotion / rollback
    s3://bucket/prefix/quality/<name>                    the quality job's reports (latest.json last)

Atomicity. S3 has no rename, but a PUT is atomic: an object is either there whole or not at all.
A version is listed only when its meta.json exists, and meta.json is written after every other file
of the version (with If-None-Match: *, so a version id is never overwritten): a writer killed at any
point leaves files nobody lists, loads or can point `current` at. `current` is a compare-and-swap:
the writer reads it (and its ETag), then PUTs the new pointer with If-Match: <that ETag> (If-None-Match:
* for the very first one). Of two trainers that race, the store accepts exactly one write; the other
gets 412 and a RegistryError naming the winner. The pointer carries a sequence number; the history is
one create-only object per change, keyed by that number, so it is append-only without locks.

Reading. A server polls with one conditional GET of `current` (If-None-Match: <last ETag>): an
unchanged pointer costs a 304 with no body and no listing. A version is downloaded once into the
local cache (MODEL_CACHE_DIR), to a temp file renamed into place, and its sha256 is checked against
meta.json before every load; versions are immutable, so a verified copy is reused.

Credentials and endpoint come from boto3's own variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION, AWS_ENDPOINT_URL (MinIO, R2, a local moto server), or any other source boto3
reads (instance role, ~/.aws). When the store cannot be reached, RegistryUnavailable (a
RegistryError): a server keeps serving what it has and counts it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import joblib
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, NoCredentialsError

from registry.meta import MetaError, ModelMeta
from registry.models import Model, ModelError, from_artifact, to_artifact
from registry.store import (
    ANY,
    HISTORY_FIELDS,
    VERSION_RE,
    Pointer,
    RegistryError,
    RegistryUnavailable,
    checksum_problem,
    file_sha256,
    lost_race,
    stale_after_seconds,
)

log = logging.getLogger("registry.objectstore")

# The poll: one attempt, short timeouts: a dead endpoint costs a poll about 2 s, never a request.
POLL_CONFIG = Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1, "mode": "standard"})
# Everything else (uploads, downloads, promotions): a few retries, room for a large artifact.
DATA_CONFIG = Config(connect_timeout=2, read_timeout=20, retries={"max_attempts": 3, "mode": "standard"})
TRANSFER = TransferConfig(multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024)
RETRYABLE_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed"}
CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"}


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


class ObjectRegistry(Pointer):
    """Model versions, `current` and its history in one bucket under one prefix."""

    def __init__(self, url: str, cache_dir: Path | str, client: Any = None, poll_client: Any = None) -> None:
        from registry import parse_model_dir

        self.url = parse_model_dir(url)
        if not isinstance(self.url, str):
            raise RegistryError(f"{url!r} is not an s3://bucket/prefix URL")
        self.bucket, _, prefix = self.url.removeprefix("s3://").partition("/")
        self.prefix = f"{prefix}/" if prefix else ""
        # the local side: downloaded versions, report staging, the training lock (train/pipeline.py)
        self.root = Path(cache_dir) / self.bucket / (prefix or "_")
        self.versions_dir = f"{self.url}/versions/"
        self.current_file = f"{self.url}/current"
        self.history_file = f"{self.url}/history/"
        self.reports_dir = self.root / "quality"
        self._data = client or boto3.session.Session().client("s3", config=DATA_CONFIG)
        self._poll = poll_client or boto3.session.Session().client("s3", config=POLL_CONFIG)
        self._seen: tuple[str, str | None] | None = None  # (ETag, version) of the last `current` read
        self._history: dict[str, dict[str, str]] = {}  # history objects are immutable: read each once
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ObjectRegistry({self.url!r})"

    # -- keys and calls ----------------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """One S3 call; store trouble becomes RegistryUnavailable, other refusals RegistryError."""
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code, status = _code(exc), _status(exc)
            if status >= 500 or code in RETRYABLE_CODES:
                raise RegistryUnavailable(f"object store error on {what}: {code} (HTTP {status}); "
                                          "is the store healthy?") from None
            if code == "NoSuchBucket":
                raise RegistryError(f"bucket {self.bucket!r} does not exist (MODEL_DIR={self.url}); create it "
                                    "or fix MODEL_DIR") from None
            if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise RegistryError(f"access denied on {what}: {code}; check AWS_ACCESS_KEY_ID / "
                                    "AWS_SECRET_ACCESS_KEY and the bucket policy") from None
            raise
        except NoCredentialsError:
            raise RegistryError(f"no credentials for {self.url}: set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY (or give the host a role)") from None
        except (HTTPClientError, BotoCoreError) as exc:
            endpoint = os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
            raise RegistryUnavailable(f"object store {endpoint} unreachable on {what}: "
                                      f"{type(exc).__name__}: {exc}") from None

    def _exists(self, key: str) -> bool:
        try:
            self._call(f"HEAD {self._where(key)}", self._data.head_object, Key=key)
        except ClientError as exc:
            if _status(exc) == 404:
                return False
            raise RegistryError(f"cannot read {self._where(key)}: {_code(exc)}") from None
        return True

    def _get(self, key: str) -> tuple[bytes, str] | None:
        """(body, ETag) of an object, None when it is not there."""
        try:
            resp = self._call(f"GET {self._where(key)}", self._data.get_object, Key=key)
            return resp["Body"].read(), resp["ETag"]
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise RegistryError(f"cannot read {self._where(key)}: {_code(exc)}") from None
        except (HTTPClientError, BotoCoreError) as exc:  # the body broke off midway
            raise RegistryUnavailable(f"reading {self._where(key)} broke off: {exc}") from None

    def _list(self, prefix: str) -> list[str]:
        """Every key under `prefix` (paginated). Never on the poll."""
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self._call(f"LIST {self._where(prefix)}", self._data.list_objects_v2, Prefix=prefix, **token)
            keys += [item["Key"] for item in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return keys
            token = {"ContinuationToken": page["NextContinuationToken"]}

    # -- reading -----------------------------------------------------------------------------
    def versions(self) -> list[str]:
        """Complete versions (meta.json written), oldest first: one listing of versions/."""
        base = self._key("versions") + "/"
        found = set()
        for key in self._list(base):
            version, _, name = key[len(base):].partition("/")
            if name == "meta.json" and VERSION_RE.match(version):
                found.add(version)
        return sorted(found)

    def current(self) -> str | None:
        """The version `current` names (None: nothing deployed). One conditional GET: 304 when unchanged."""
        seen = self._seen
        key = self._key("current")
        try:
            resp = self._call(f"GET {self.current_file}", self._poll.get_object, Key=key,
                              **({"IfNoneMatch": seen[0]} if seen else {}))
        except ClientError as exc:
            if _status(exc) == 304 and seen:
                return seen[1]
            if _status(exc) == 404:
                self._seen = None
                return None
            raise RegistryError(f"cannot read {self.current_file}: {_code(exc)}") from None
        try:
            body = resp["Body"].read()
        except (HTTPClientError, BotoCoreError) as exc:
            raise RegistryUnavailable(f"reading {self.current_file} broke off: {exc}") from None
        version = self._parse_pointer(body).get("version")
        self._seen = (resp["ETag"], version)
        return version

    def _parse_pointer(self, body: bytes) -> dict[str, Any]:
        try:
            record = json.loads(body)
            if not isinstance(record, dict) or not VERSION_RE.match(str(record.get("version"))):
                raise ValueError("no model version in it")
        except ValueError as exc:
            raise RegistryError(f"{self.current_file} is not a pointer this registry wrote ({exc}); point it at "
                                "a version with `make rollback TO=<version>`") from None
        return record

    def _pointer(self) -> tuple[dict[str, Any] | None, str | None]:
        """(record, ETag) of `current`, read fresh; record None when missing or unreadable."""
        got = self._get(self._key("current"))
        if got is None:
            return None, None
        body, etag = got
        try:
            return self._parse_pointer(body), etag
        except RegistryError:  # what a rollback repairs: replace it (If-Match its ETag)
            return None, etag

    def _check_version(self, version: str) -> None:
        if not VERSION_RE.match(version or ""):
            raise RegistryError(f"{version!r} is not a model version (expected YYYYMMDDTHHMMSSZ-abc123)")

    def _not_found(self, version: str) -> RegistryError:
        known = ", ".join(self.versions()[-5:]) or "none"
        return RegistryError(f"model version {version} not found in {self.versions_dir} (latest: {known})")

    def path(self, version: str) -> str:
        """The URL of `version`'s folder; RegistryError when the version is not complete there."""
        self._check_version(version)
        if not (self._cached(version, "meta.json").is_file() or self._exists(self._key("versions", version, "meta.json"))):
            raise self._not_found(version)
        return f"{self.versions_dir}{version}/"

    def _cached(self, version: str, name: str) -> Path:
        return self.root / "versions" / version / name

    def meta(self, version: str) -> ModelMeta:
        """meta.json of `version` (from the cache once downloaded: versions are immutable), validated."""
        self._check_version(version)
        cached = self._cached(version, "meta.json")
        if cached.is_file():
            text = cached.read_bytes()
        else:
            got = self._get(self._key("versions", version, "meta.json"))
            if got is None:
                raise self._not_found(version)
            text = got[0]
        try:
            meta = ModelMeta.from_json(text, f"meta.json of {version}")
        except MetaError as exc:
            raise RegistryError(str(exc)) from None
        if not cached.is_file():
            _write_atomic(cached, text)
        return meta

    def artifact_bytes(self, version: str) -> int | None:
        """Size of model.joblib (the audit's profile), None when it cannot be read."""
        try:
            head = self._call("HEAD model.joblib", self._data.head_object,
                              Key=self._key("versions", version, "model.joblib"))
        except (ClientError, RegistryError):
            return None
        return int(head["ContentLength"])

    def local_model(self, version: str, meta: ModelMeta | None = None) -> Path:
        """model.joblib of `version` in the local cache, downloaded if needed, its sha256 verified."""
        meta = meta or self.meta(version)
        target = self._cached(version, "model.joblib")
        where = self._where(self._key("versions", version, "model.joblib"))
        if target.is_file() and checksum_problem(version, meta, target, str(target)) is None:
            return target  # a verified copy: versions never change
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".model.joblib.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            try:
                self._call(f"GET {where}", self._data.download_file, Key=self._key("versions", version, "model.joblib"),
                           Filename=str(tmp), Config=TRANSFER)
            except ClientError as exc:
                if _status(exc) == 404:
                    raise RegistryError(f"{where} is missing: version {version} is incomplete") from None
                raise RegistryError(f"cannot download {where}: {_code(exc)}") from None
            problem = checksum_problem(version, meta, tmp, where)
            if problem:
                raise RegistryError(problem)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    def load(self, version: str) -> tuple[Model, ModelMeta]:
        """(model, meta) of `version`: downloaded once, checksum-verified, then unpickled (trusted files only)."""
        meta = self.meta(version)
        path = self.local_model(version, meta)
        try:
            artifact = joblib.load(path)
        except Exception as exc:  # a truncated or foreign file raises many different things
            raise RegistryError(f"cannot load {path} (of {self.versions_dir}{version}/): "
                                f"{type(exc).__name__}: {exc}") from None
        try:
            return from_artifact(artifact), meta
        except ModelError as exc:
            raise RegistryError(f"{path}: {exc}") from None

    def history(self) -> list[dict[str, str]]:
        """Promotions and rollbacks, oldest first: one listing of history/, each record read once.

        The record in `current` counts too, so a writer that stopped between moving `current` and
        writing its history object leaves no gap.
        """
        base = self._key("history") + "/"
        rows: dict[int, dict[str, str]] = {}
        for key in self._list(base):
            name = key[len(base):].removesuffix(".json")
            if not name.isdigit():
                continue
            if key not in self._history:
                got = self._get(key)
                if got is None:
                    continue
                try:
                    self._history[key] = _row(json.loads(got[0]))
                except (ValueError, AttributeError):
                    log.warning("%s is not a history record; skipped", self._where(key))
                    continue
            rows[int(name)] = self._history[key]
        record, _ = self._pointer()
        if record and isinstance(record.get("seq"), int) and record["seq"] not in rows:
            rows[record["seq"]] = _row(record)
        return [rows[seq] for seq in sorted(rows)]

    # -- writing -----------------------------------------------------------------------------
    def write(self, model: Model, meta: ModelMeta, extra: Callable[[Path], None] | None = None) -> str:
        """Upload a version: model.joblib, then what `extra(folder)` adds (plots), then meta.json.

        Until meta.json is there the version is not listed, loaded or deployable; on an error the
        uploaded files are deleted (a killed writer leaves them unlisted: see registry/README.md).
        """
        version = meta.version
        self._check_version(version)
        meta_key = self._key("versions", version, "meta.json")
        if self._exists(meta_key):
            raise RegistryError(f"version {version} already exists in {self.versions_dir}")
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_orphans()
        uploaded: list[str] = []
        with tempfile.TemporaryDirectory(prefix=f".write-{version}-", dir=self.root) as tmp_name:
            tmp = Path(tmp_name)
            joblib.dump(to_artifact(model), tmp / "model.joblib")
            meta = meta.model_copy(update={"model_sha256": file_sha256(tmp / "model.joblib")})
            try:
                self._upload(tmp / "model.joblib", version, uploaded)
                if extra:
                    extra(tmp)
                for file in sorted(tmp.iterdir()):
                    if file.is_file() and file.name not in ("model.joblib", "meta.json"):
                        self._upload(file, version, uploaded)
                body = meta.to_json().encode()
                try:
                    self._call(f"PUT {self._where(meta_key)}", self._data.put_object, Key=meta_key,
                               Body=body, ContentType="application/json", IfNoneMatch="*")
                except (ClientError, RegistryUnavailable) as exc:
                    # A retried PUT whose first try did land gets 412: then meta.json is ours, the version
                    # is complete. Someone else's meta.json: refuse, and delete nothing of theirs.
                    there = self._get(meta_key)
                    if there is not None and there[0] != body:
                        uploaded.clear()
                        raise RegistryError(f"version {version} already exists in {self.versions_dir}") from None
                    if there is None:
                        what = _code(exc) if isinstance(exc, ClientError) else str(exc)
                        raise RegistryError(f"could not write {self._where(meta_key)}: {what}") from None
            except BaseException as exc:
                self._delete(uploaded)
                if isinstance(exc, RegistryError | ClientError | OSError):
                    raise RegistryError(f"could not write model version {version} to {self.versions_dir}: {exc}; "
                                        "nothing was made visible") from exc
                raise
            # what was uploaded is what is cached: the next load needs no download
            cache = self._cached(version, "meta.json").parent
            cache.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / "model.joblib", cache / "model.joblib")
            _write_atomic(cache / "meta.json", meta.to_json().encode())
        return f"{self.versions_dir}{version}/"

    def _remove_orphans(self) -> None:
        """Delete what writers killed midway left: objects of a version that has no meta.json (never
        listed, loaded or deployable) and unfinished multipart uploads, once older than an hour (no
        write takes that long, so a write in progress elsewhere is never touched). Best effort."""
        base, cutoff = self._key("versions") + "/", stale_after_seconds()
        try:
            objects: dict[str, list[tuple[str, float]]] = {}
            token: dict[str, str] = {}
            while True:
                page = self._call(f"LIST {self._where(base)}", self._data.list_objects_v2, Prefix=base, **token)
                for item in page.get("Contents", []):
                    version = item["Key"][len(base):].partition("/")[0]
                    objects.setdefault(version, []).append((item["Key"], item["LastModified"].timestamp()))
                if not page.get("IsTruncated"):
                    break
                token = {"ContinuationToken": page["NextContinuationToken"]}
            orphans = [key for version, items in objects.items()
                       if not any(key.endswith("/meta.json") for key, _ in items)
                       and all(modified < cutoff for _, modified in items)
                       for key, _ in items]
            if orphans:
                log.warning("removing %d object(s) of unfinished versions under %s (a writer was killed)",
                            len(orphans), self._where(base))
                self._delete(orphans)
            uploads = self._call(f"LIST uploads {self._where(base)}", self._data.list_multipart_uploads, Prefix=base)
            for upload in uploads.get("Uploads", []):
                if upload["Initiated"].timestamp() < cutoff:
                    self._call("abort upload", self._data.abort_multipart_upload, Key=upload["Key"],
                               UploadId=upload["UploadId"])
        except (RegistryError, ClientError) as exc:
            log.warning("could not look for unfinished versions under %s: %s", self._where(base), exc)

    def _upload(self, file: Path, version: str, uploaded: list[str]) -> None:
        key = self._key("versions", version, file.name)
        uploaded.append(key)
        try:
            self._call(f"PUT {self._where(key)}", self._data.upload_file, Filename=str(file), Key=key, Config=TRANSFER)
        except ClientError as exc:
            raise RegistryError(f"could not upload {self._where(key)}: {_code(exc)}") from None

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self._call(f"DELETE {self._where(key)}", self._data.delete_object, Key=key)
            except Exception:  # best effort: an unlisted leftover is harmless
                log.warning("could not delete %s after a failed write", self._where(key))

    def set_current(self, version: str, action: str, reason: str, expected: object = ANY) -> str | None:
        """Point `current` at `version` with one conditional write; record it; the previous version.

        `expected`: the version the caller saw as current (a training run's champion). RegistryError,
        naming the version that is current now, when it is not, or when another writer moves
        `current` between this read and this write (412 from the store): nothing changes then.
        """
        self.path(version)  # must exist, complete
        record, etag = self._pointer()
        previous = record.get("version") if record else None
        if expected is not ANY and previous != expected:
            raise lost_race(version, expected, previous, self.current_file)
        seq = record["seq"] + 1 if record and isinstance(record.get("seq"), int) else self._next_seq()
        new = {"version": version, "seq": seq, "at": datetime.now(UTC).isoformat(timespec="seconds"),
               "action": action, "from_version": previous or "", "to_version": version, "reason": reason}
        body = json.dumps(new).encode()
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self._call(f"PUT {self.current_file}", self._data.put_object, Key=self._key("current"), Body=body,
                       ContentType="application/json", **condition)
        except ClientError as exc:
            if _code(exc) not in CONFLICT_CODES:
                raise RegistryError(f"could not write {self.current_file}: {_code(exc)}") from None
            now, _ = self._pointer()
            if now != new:  # (equal: a retry of our own write that had landed got the 412)
                raise lost_race(version, previous, now.get("version") if now else None, self.current_file) from None
        history_key = self._key("history", f"{seq:010d}.json")
        try:
            self._call(f"PUT {self._where(history_key)}", self._data.put_object, Key=history_key, Body=body,
                       ContentType="application/json", IfNoneMatch="*")
        except (ClientError, RegistryError) as exc:  # `current` carries the record: history() still shows it
            log.warning("current -> %s, but its history record %s was not written: %s", version,
                        self._where(history_key), exc)
        return previous

    def _next_seq(self) -> int:
        """1 + the newest history record's number (the first pointer, or one deleted by hand)."""
        base = self._key("history") + "/"
        numbers = [int(n) for k in self._list(base) if (n := k[len(base):].removesuffix(".json")).isdigit()]
        return max(numbers, default=0) + 1

    # -- reports (monitoring/quality.py, monitoring/shadow.py) ---------------------------------
    def publish_reports(self, names: list[str]) -> None:
        """Upload reports_dir/<name> to quality/<name>, in order (put latest.json last)."""
        for name in names:
            key = self._key("quality", name)
            try:
                self._call(f"PUT {self._where(key)}", self._data.upload_file, Filename=str(self.reports_dir / name),
                           Key=key, Config=TRANSFER)
            except ClientError as exc:
                raise RegistryError(f"could not upload {self._where(key)}: {_code(exc)}") from None

    def fetch_report(self, name: str) -> Path:
        """quality/<name> downloaded into reports_dir (a path that does not exist when it is not there)."""
        local = self.reports_dir / name
        got = self._get(self._key("quality", name))
        if got is None:
            local.unlink(missing_ok=True)
        else:
            _write_atomic(local, got[0])
        return local

    def read_report(self, name: str, stamp: object = None) -> tuple[object, bytes] | None:
        """(ETag, body) of quality/<name> when it changed since `stamp`; None when unchanged or missing.

        One conditional GET; RegistryUnavailable when the store does not answer.
        """
        key = self._key("quality", name)
        try:
            resp = self._call(f"GET {self._where(key)}", self._poll.get_object, Key=key,
                              **({"IfNoneMatch": stamp} if isinstance(stamp, str) else {}))
            return resp["ETag"], resp["Body"].read()
        except ClientError as exc:
            if _status(exc) in (304, 404):
                return None
            raise RegistryError(f"cannot read {self._where(key)}: {_code(exc)}") from None
        except (HTTPClientError, BotoCoreError) as exc:
            raise RegistryUnavailable(f"reading {self._where(key)} broke off: {exc}") from None


def _row(record: dict[str, Any]) -> dict[str, str]:
    return {field: str(record.get(field) or "") for field in HISTORY_FIELDS}


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

