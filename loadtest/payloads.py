"""Payloads: real feature rows and their entity keys, sampled from the app database.

    python -m loadtest.payloads --out var/loadtest/payloads.json --rows 2000

The rows come from the same builders as training (features.build), as of the end of the
observed data, so the load test sends what production would: real value ranges, real nulls,
real category mixes. The user ids let the by-user endpoint find its users, so build the file
from the DATABASE_URL the server under test reads. The locustfile reads LOADTEST_PAYLOADS
(default var/loadtest/payloads.json) and builds the file once when it is missing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from features.schema import FEATURE_NAMES, schema_fingerprint
from features.spec import SPEC

ENV = "LOADTEST_PAYLOADS"
DEFAULT_PATH = Path("var/loadtest/payloads.json")
DEFAULT_ROWS = 2000


class PayloadError(RuntimeError):
    """The payload file cannot be built or used; the message says what to do."""


def default_path() -> Path:
    """LOADTEST_PAYLOADS, else var/loadtest/payloads.json."""
    return Path(os.environ.get(ENV) or DEFAULT_PATH)


def build(database_url: str, rows: int = DEFAULT_ROWS, seed: int = 0,
          progress=print) -> dict[str, Any]:
    """Sample `rows` entities' features as of the end of the data in `database_url`."""
    # Imported here: the locustfile imports this module, and only a missing file needs pandas.
    from features.build import EmptyDataError, build_training_frame, data_end, feature_rows
    from features.db import DatabaseError, check_connection, make_engine, redact

    t0 = time.perf_counter()
    try:
        engine = make_engine(database_url)
    except DatabaseError as exc:
        raise PayloadError(f"cannot build payloads: {exc}") from None
    try:
        check_connection(engine)
        as_of = data_end(engine)
        frame = build_training_frame(engine, [as_of])
    except (DatabaseError, EmptyDataError) as exc:
        raise PayloadError(f"cannot build payloads: {exc}") from None
    finally:
        engine.dispose()
    if len(frame) < rows:
        progress(f"payloads: the database has {len(frame):,} {SPEC.entity.name}s as of {as_of:%Y-%m-%d}; "
                 f"using all of them instead of {rows:,}")
    sample = frame.sample(n=min(rows, len(frame)), random_state=seed)
    payload = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": redact(database_url),
        "as_of": as_of.isoformat(),
        "schema_fingerprint": schema_fingerprint(),
        # the key in its own type (spec.yml entity.type): what the app would send
        "rows": [{"user_id": k, "features": f}
                 for k, f in zip(sample[SPEC.entity.key].tolist(), feature_rows(sample), strict=True)],
    }
    progress(f"payloads: {len(payload['rows']):,} rows as of {as_of:%Y-%m-%d} from "
             f"{payload['database']} in {time.perf_counter() - t0:.1f}s")
    return payload


def write(payload: dict[str, Any], path: Path) -> Path:
    """Write atomically (temp file, then rename): concurrent readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(payload))
    tmp.replace(path)
    return path


def load(path: Path) -> dict[str, Any]:
    """Read and check a payload file built by `build`."""
    try:
        payload = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise PayloadError(f"no payload file at {path}: run `python -m loadtest.payloads --out {path}`") from None
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"{path} is not JSON ({exc}); delete it and rebuild") from None
    rows = payload.get("rows") if isinstance(payload, dict) else None
    if not rows:
        raise PayloadError(f"{path} has no rows; delete it and rebuild")
    if payload.get("schema_fingerprint") != schema_fingerprint():
        raise PayloadError(
            f"{path} was built for another feature schema ({payload.get('schema_fingerprint')}, "
            f"now {schema_fingerprint()}); delete it and rebuild with python -m loadtest.payloads"
        )
    missing = set(FEATURE_NAMES) - rows[0]["features"].keys()
    if missing:
        raise PayloadError(f"{path} rows lack features {sorted(missing)}; delete it and rebuild")
    return payload


def ensure(path: Path, database_url: str, rows: int = DEFAULT_ROWS,
           progress=print) -> dict[str, Any]:
    """The payloads at `path`, built from `database_url` if missing."""
    if not path.exists():
        progress(f"payloads: {path} is missing; building it from the database")
        write(build(database_url, rows, progress=progress), path)
    return load(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.payloads", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help=f"default: ${ENV} or {DEFAULT_PATH}")
    p.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"rows to sample (default {DEFAULT_ROWS})")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--database-url", default=None, help="default: DATABASE_URL")
    args = p.parse_args(argv)
    if args.rows < 1:
        p.error(f"--rows must be at least 1, got {args.rows}")
    if args.database_url is None:
        from stack.settings import get_settings

        args.database_url = get_settings().database_url
    out = args.out or default_path()
    try:
        write(build(args.database_url, args.rows, args.seed), out)
    except PayloadError as exc:
        print(f"payloads: {exc}", file=sys.stderr)
        return 2
    print(f"payloads: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
