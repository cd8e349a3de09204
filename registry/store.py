"""The registry store: a folder. Versions are immutable directories; `current` names the live one.

    $MODEL_DIR/versions/<version>/{model.joblib, meta.json, *.png}
    $MODEL_DIR/current        one line: the version serving traffic (replaced by rename)
    $MODEL_DIR/history.csv    promotions and rollbacks: when, from, to, why

joblib files are pickles: loading one runs code. Only load artifacts this registry wrote.

    python -m registry list | rollback [--to VERSION] [--reason TEXT]
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import joblib

from registry.meta import MetaError, ModelMeta
from registry.models import Model, ModelError, from_artifact, to_artifact

VERSION_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
HISTORY_FIELDS = ("at", "action", "from_version", "to_version", "reason")
REPORTS_FOLDER = "quality"  # the quality job's reports: $MODEL_DIR/quality/ (objects quality/<name> on S3)


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; the message says why."""


class RegistryUnavailable(RegistryError):
    """The registry's object store did not answer (network, timeout, 5xx); nothing is known to be wrong
    with what it holds. A server keeps serving what it has (serve/models.py) and counts it."""


def new_version(now: datetime | None = None) -> str:
    """A version id that sorts by time: YYYYMMDDTHHMMSSZ-<6 hex>, the hex being the microsecond.

    It was random: two versions made in one second (a fast training run, two trainers) then
    listed in either order, and "oldest first" was a coin toss. Two writers in one microsecond
    cannot overwrite each other either: a version's folder, or its meta.json in an object store,
    is created only if absent.
    """
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{now.microsecond:06x}"


ANY = object()
"""`set_current(..., expected=ANY)`: replace `current` whatever it names (a rollback by hand)."""


def file_sha256(path: Path | str) -> str:
    """The sha256 (hex) of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_problem(version: str, meta: ModelMeta, path: Path | str, where: str) -> str | None:
    """Why the model file at `path` is not the one `version`'s meta.json describes (None: it is)."""
    if meta.model_sha256 is None:  # written before checksums were recorded
        return None
    actual = file_sha256(path)
    if actual == meta.model_sha256:
        return None
    return (f"model.joblib of {version} ({where}) does not match its meta.json: sha256 expected "
            f"{meta.model_sha256}, got {actual}; refusing to load it")


class Pointer:
    """What both registry backends share on top of current(), history() and set_current()."""

    def current(self) -> str | None:
        raise NotImplementedError

    def history(self) -> list[dict[str, str]]:
        raise NotImplementedError

    def set_current(self, version: str, action: str, reason: str, expected: object = ANY) -> str | None:
        raise NotImplementedError

    def rollback(self, to: str | None = None, reason: str = "") -> tuple[str | None, str]:
        """Re-point `current` to `to`, or to the version deployed before the current one."""
        try:
            now = self.current()
        except RegistryError:
            if to is None:
                raise
            now = None
        if to is None:
            to = self._previous_deployed(now)
            if to is None:
                raise RegistryError("nothing to roll back to: no earlier deployed version in the history "
                                    "(use `make rollback TO=<version>`)")
        if to == now:
            raise RegistryError(f"{to} is already current")
        self.set_current(to, "rollback", reason or "manual rollback")
        return now, to

    def deployed(self) -> list[str]:
        """Versions the history says were deployed (promoted or rolled back to), newest first, once each."""
        try:
            rows = self.history()
        except (OSError, UnicodeDecodeError, csv.Error, RegistryError):
            return []
        seen: list[str] = []
        for row in reversed(rows):
            version = row.get("to_version") or ""
            if VERSION_RE.match(version) and version not in seen:
                seen.append(version)
        return seen

    def _previous_deployed(self, now: str | None) -> str | None:
        # Walk the history backwards: the version that was current before `now` became current.
        for row in reversed(self.history()):
            if row["to_version"] == now and row["from_version"]:
                return row["from_version"]
        return None


def lost_race(version: str, expected: object, now: str | None, where: str) -> RegistryError:
    """The error of a promotion whose champion is no longer `current`."""
    return RegistryError(f"{where} now names {now or 'nothing'}, not {expected or 'nothing'} (the version this "
                         f"run was compared with): another writer deployed {now or 'a change'} first; "
                         f"{version} is saved but was not deployed (`make rollback TO={version}` deploys it)")


STALE_TMP_SECONDS = 3600.0  # no save takes an hour: older leftovers of an unfinished save were left by a killed one


def stale_after_seconds() -> float:
    """The Unix time before which an unfinished save's leftovers are stale (both backends' rule)."""
    return time.time() - STALE_TMP_SECONDS


def _remove_stale_temp_folders(folder: Path) -> None:
    """Remove `.tmp-<version>` folders a save killed midway left behind (never listed as versions)."""
    cutoff = stale_after_seconds()
    for stale in folder.glob(".tmp-*"):
        try:
            if stale.stat().st_mtime < cutoff:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Registry(Pointer):
    """Read and write model versions under one folder."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.current_file = self.root / "current"
        self.history_file = self.root / "history.csv"
        self.reports_dir = self.root / REPORTS_FOLDER

    # -- reading -----------------------------------------------------------------------------
    def versions(self) -> list[str]:
        """Complete versions, oldest first (temp folders of unfinished writes are not listed)."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(
            p.name for p in self.versions_dir.iterdir()
            if VERSION_RE.match(p.name) and (p / "meta.json").is_file()
        )

    def current(self) -> str | None:
        """The version `current` names, or None when nothing is deployed.

        RegistryError when the file is there but unreadable (a directory, not UTF-8, no access).
        """
        try:
            value = self.current_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as exc:
            raise RegistryError(f"{self.current_file} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                "point it at a version with `make rollback TO=<version>`") from None
        except OSError as exc:
            raise RegistryError(f"cannot read {self.current_file}: {exc.strerror or exc}; "
                                "point it at a version with `make rollback TO=<version>`") from None
        return value or None

    def path(self, version: str) -> Path:
        """The folder of `version`; RegistryError when it does not exist."""
        if not VERSION_RE.match(version or ""):
            raise RegistryError(f"{version!r} is not a model version (expected YYYYMMDDTHHMMSSZ-abc123)")
        folder = self.versions_dir / version
        if not (folder / "meta.json").is_file():
            known = ", ".join(self.versions()[-5:]) or "none"
            raise RegistryError(f"model version {version} not found in {self.versions_dir} (latest: {known})")
        return folder

    def meta(self, version: str) -> ModelMeta:
        """meta.json of `version`, validated (RegistryError names the field that is wrong)."""
        path = self.path(version) / "meta.json"
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise RegistryError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            return ModelMeta.from_json(text, f"meta.json of {version}")
        except MetaError as exc:
            raise RegistryError(str(exc)) from None

    def load(self, version: str) -> tuple[Model, ModelMeta]:
        """(model, meta) of `version`. Trusted files only: joblib is pickle."""
        meta = self.meta(version)
        path = self.path(version) / "model.joblib"
        try:
            problem = checksum_problem(version, meta, path, str(path))
        except OSError as exc:
            raise RegistryError(f"cannot read {path}: {exc.strerror or exc}") from None
        if problem:
            raise RegistryError(problem)
        try:
            artifact = joblib.load(path)
        except Exception as exc:  # a truncated or foreign file raises many different things
            raise RegistryError(f"cannot load {path}: {type(exc).__name__}: {exc}") from None
        try:
            return from_artifact(artifact), meta
        except ModelError as exc:
            raise RegistryError(f"{path}: {exc}") from None

    def history(self) -> list[dict[str, str]]:
        """Rows of history.csv, oldest first."""
        if not self.history_file.exists():
            return []
        with self.history_file.open(newline="") as f:
            return list(csv.DictReader(f))

    # -- writing -----------------------------------------------------------------------------
    def write(
        self,
        model: Model,
        meta: ModelMeta,
        extra: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write a version atomically: into a temp folder, fsync, then one rename.

        `extra(folder)` may add files (plots). On any error the temp folder is removed and
        nothing becomes visible.
        """
        version = meta.version
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        final = self.versions_dir / version
        if final.exists():
            raise RegistryError(f"version {version} already exists")
        _remove_stale_temp_folders(self.versions_dir)
        tmp = self.versions_dir / f".tmp-{version}"
        try:
            tmp.mkdir()
            joblib.dump(to_artifact(model), tmp / "model.joblib")
            meta = meta.model_copy(update={"model_sha256": file_sha256(tmp / "model.joblib")})
            if extra:
                extra(tmp)
            (tmp / "meta.json").write_text(meta.to_json())
            for file in tmp.iterdir():
                with file.open("rb") as f:
                    os.fsync(f.fileno())
            _fsync_dir(tmp)
            os.rename(tmp, final)
            _fsync_dir(self.versions_dir)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise RegistryError(f"could not write model version {version} to {self.versions_dir}: "
                                    f"{exc.strerror or exc}; nothing was written") from exc
            raise
        return final

    def set_current(self, version: str, action: str, reason: str, expected: object = ANY) -> str | None:
        """Point `current` at `version` (atomic rename) and record it; returns the previous one.

        `expected`: the version the caller saw as current (a training run's champion); when `current`
        names another one now, RegistryError and nothing changes. In a folder, runs are serialised by
        the training lock (train/pipeline.py), so this check is enough.
        """
        self.path(version)  # must exist
        try:
            previous = self.current()
        except RegistryError:  # an unreadable `current` is what a rollback repairs
            previous = None
        if expected is not ANY and previous != expected:
            raise lost_race(version, expected, previous, str(self.current_file))
        tmp = self.root / f".current.{os.getpid()}.tmp"
        tmp.write_text(version + "\n")
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.current_file)
        _fsync_dir(self.root)
        self._append_history(action, previous, version, reason)
        return previous

    def artifact_bytes(self, version: str) -> int | None:
        """Size of model.joblib (the audit's profile), None when it is not there."""
        artifact = self.versions_dir / version / "model.joblib"
        return artifact.stat().st_size if artifact.is_file() else None

    # -- reports: monitoring/quality.py writes them into reports_dir, the server reads latest.json --
    def publish_reports(self, names: list[str]) -> None:
        """Nothing to do: reports_dir is the registry's own folder."""

    def fetch_report(self, name: str) -> Path:
        return self.reports_dir / name

    def read_report(self, name: str, stamp: object = None) -> tuple[object, bytes] | None:
        """((mtime, size), bytes) of reports_dir/<name> when it changed since `stamp`; None when
        unchanged or missing (one stat when unchanged)."""
        path = self.reports_dir / name
        try:
            st = path.stat()
            new = (st.st_mtime, st.st_size)
            return None if new == stamp else (new, path.read_bytes())
        except OSError:
            return None

    def _append_history(self, action: str, previous: str | None, version: str, reason: str) -> None:
        new = not self.history_file.exists()
        with self.history_file.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "action": action,
                "from_version": previous or "",
                "to_version": version,
                "reason": reason,
            })
