"""The domain spec: features/spec.yml read once, checked, and typed.

Everything domain-specific the stack knows comes from here: the entity and its key type, the
time windows, the label and how its SQL count becomes 0/1, the outcome A/B analysis counts, the
loader, and each feature (kind, allowed values or range, nullability, how it derives from its
SQL columns). A mistake in the file stops the process at import with the key that is wrong.
"""

from __future__ import annotations

import importlib
import keyword
import re
import reprlib
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

SPEC_FILE = Path(__file__).parent / "spec.yml"
SQL_DIR = Path(__file__).parent / "sql"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_COLUMN_REF = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
KEY_MAX_CHARS = 64  # a string key longer than this is refused before it reaches the database
INT64 = (-(2**63), 2**63 - 1)


class SpecError(ValueError):
    """features/spec.yml is wrong; the message names the key and what to do."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _identifier(value: str, what: str) -> str:
    if not _NAME.match(value) or keyword.iskeyword(value):
        raise ValueError(f"{what} {value!r} must be a plain SQL/Python name (letters, digits, _)")
    return value


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlist, _SHOWN.maxdict = 2, 40, 40, 4, 4


def shown(value: Any) -> str:
    """A client's value as a message quotes it: repr, short and shallow (a 1,000-deep list must not
    recurse, a 5,000-digit integer must not fill the message)."""
    return _SHOWN.repr(value)


class Entity(_Strict):
    """The prediction unit: its name, its key column and the key's type."""

    name: str
    key: str
    type: Literal["string", "integer"]
    table: str
    example: str | int

    @model_validator(mode="after")
    def _check(self) -> Entity:
        _identifier(self.key, "entity.key")
        _identifier(self.table, "entity.table")
        self.parse(str(self.example))  # raises ValueError naming the problem
        return self

    def parse(self, raw: Any) -> str | int:
        """A key from a path, a JSON body or a config file, in the key's type; ValueError if not one."""
        if self.type == "integer":
            if isinstance(raw, bool):
                raise ValueError(f"must be an integer {self.name} id, got {shown(raw)}")
            if isinstance(raw, int):
                value = raw
            elif isinstance(raw, str) and re.fullmatch(r"[+-]?[0-9]{1,19}", raw.strip()):
                value = int(raw)
            else:
                raise ValueError(f"must be an integer {self.name} id, got {shown(raw)}")
            if not INT64[0] <= value <= INT64[1]:
                raise ValueError(f"must be a 64-bit integer {self.name} id, got {shown(value)}")
            return value
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str) or not 0 < len(raw) <= KEY_MAX_CHARS:
            raise ValueError(f"must be a {self.name} id of 1-{KEY_MAX_CHARS} characters")
        return raw

    @staticmethod
    def canonical(key: str | int) -> str:
        """The one text form of a key: what A/B assignment hashes and ab_exposures stores."""
        return str(key)


class Label(_Strict):
    """The label: the name of its column, its horizon, and how label.sql's count becomes 0/1."""

    name: str
    horizon_days: PositiveInt
    sql: str = "label"
    positive: Literal["count > 0", "count == 0"]

    @model_validator(mode="after")
    def _check(self) -> Label:
        _identifier(self.name, "label.name")
        return self

    @property
    def horizon(self) -> timedelta:
        return timedelta(days=self.horizon_days)

    def from_counts(self, counts):
        """0/1 labels from the counts label.sql returned (missing = no row = a count of 0)."""
        counts = counts.fillna(0)
        return (counts > 0 if self.positive == "count > 0" else counts == 0).astype("int64")


class Outcome(_Strict):
    """What A/B analysis counts as a conversion: a row of `table` for the unit within the window."""

    table: str
    key: str
    time: str
    window_days: PositiveInt
    noun: str

    @model_validator(mode="after")
    def _check(self) -> Outcome:
        for what in ("table", "key", "time"):
            _identifier(getattr(self, what), f"outcome.{what}")
        return self

    @property
    def window(self) -> timedelta:
        return timedelta(days=self.window_days)


class Training(_Strict):
    as_of_count: PositiveInt = 8
    step_days: PositiveInt = 7


DERIVATIONS = ("category", "count", "value", "days_since", "hours_since", "ratio")


class FeatureSpec(_Strict):
    """One feature as written in spec.yml."""

    name: str
    kind: Literal["numeric", "categorical"]
    description: str
    nullable: bool = False
    values: tuple[str, ...] = ()
    range: tuple[float, float] | None = None
    from_: dict[str, str | list[str]] | None = Field(default=None, alias="from")
    round: Annotated[int, Field(ge=0, le=12)] | None = None

    @model_validator(mode="after")
    def _check(self) -> FeatureSpec:
        _identifier(self.name, "feature name")
        if self.kind == "categorical":
            if not self.values:
                raise ValueError(f"feature {self.name!r} is categorical: list its `values`")
            if len(set(self.values)) != len(self.values):
                raise ValueError(f"feature {self.name!r} lists a value twice")
            if self.range is not None or self.round is not None:
                raise ValueError(f"feature {self.name!r} is categorical: `range` and `round` are for numbers")
        else:
            if self.values:
                raise ValueError(f"feature {self.name!r} is numeric: `values` is for categoricals")
            if self.range is None:
                raise ValueError(f"feature {self.name!r} is numeric: give its valid `range: [low, high]`")
            if not self.range[0] <= self.range[1]:
                raise ValueError(f"feature {self.name!r}: range {list(self.range)} has low > high")
        how, columns = self.derivation
        if (how == "category") != (self.kind == "categorical"):
            raise ValueError(f"feature {self.name!r}: `{how}` does not make a {self.kind} feature")
        for column in columns:
            _identifier(column, f"feature {self.name!r}: SQL column")
        return self

    @property
    def derivation(self) -> tuple[str, tuple[str, ...]]:
        """(how, SQL columns): e.g. ("days_since", ("signup_at",))."""
        if self.from_ is None:
            return ("category" if self.kind == "categorical" else "value"), (self.name,)
        if len(self.from_) != 1:
            raise ValueError(f"feature {self.name!r}: `from` takes one of {list(DERIVATIONS)}, "
                             f"got {sorted(self.from_)}")
        (how, columns), = self.from_.items()
        if how not in DERIVATIONS:
            raise ValueError(f"feature {self.name!r}: unknown derivation {how!r}; "
                             f"use one of {list(DERIVATIONS)}")
        columns = (columns,) if isinstance(columns, str) else tuple(columns)
        if len(columns) != (2 if how == "ratio" else 1):
            raise ValueError(f"feature {self.name!r}: `{how}` takes "
                             f"{'[numerator, denominator]' if how == 'ratio' else 'one column'}")
        return how, columns


class Spec(_Strict):
    """The whole domain."""

    task: str
    entity: Entity
    loader: str
    data_end: tuple[str, ...] = Field(min_length=1)
    windows: tuple[PositiveInt, ...] = ()
    sql: tuple[str, ...] = Field(min_length=1)
    label: Label
    outcome: Outcome
    training: Training = Training()
    features: tuple[FeatureSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Spec:
        names = [f.name for f in self.features]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"features listed twice: {twice}")
        for ref in self.data_end:
            if not _COLUMN_REF.match(ref):
                raise ValueError(f"data_end entry {ref!r} must be table.column")
        if len(set(self.windows)) != len(self.windows):
            raise ValueError(f"windows {list(self.windows)} lists a window twice")
        for name in (*self.sql, self.label.sql):
            _identifier(name, "SQL file name")
        if self.label.sql in self.sql:
            raise ValueError(f"label.sql {self.label.sql!r} is also listed as a feature file in `sql`")
        return self

    # -- what the rest of the stack asks --------------------------------------------------

    @property
    def key(self) -> str:
        return self.entity.key

    def window_params(self, as_of: datetime) -> dict[str, datetime]:
        """Every datetime parameter the SQL files may use, for one as_of: no date math in SQL."""
        params = {"as_of": as_of, "label_end": as_of + self.label.horizon}
        params.update({f"since_{days}d": as_of - timedelta(days=days) for days in self.windows})
        return params

    @cached_property
    def datetime_params(self) -> frozenset[str]:
        return frozenset(self.window_params(datetime(2000, 1, 1)))

    def data_end_columns(self) -> list[tuple[str, str]]:
        """(table, column) pairs whose newest value ends the observed data."""
        return [tuple(ref.split(".", 1)) for ref in self.data_end]  # type: ignore[misc]

    def load_loader(self) -> ModuleType:
        """The loader module (seeds the database, records simulated outcomes)."""
        return importlib.import_module(self.loader)


def load_spec(path: Path = SPEC_FILE, sql_dir: Path = SQL_DIR) -> Spec:
    """Read and check a spec file; SpecError names the problem."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"cannot read the domain spec {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path} must be a mapping of keys (task, entity, label, features, ...)")
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "(top level)"
            where = _feature_name(raw, error["loc"]) or where
            problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
        raise SpecError(f"{path} is not a valid domain spec:\n  - " + "\n  - ".join(problems)) from None
    missing = [f"{sql_dir.name}/{n}.sql" for n in (*spec.sql, spec.label.sql) if not (sql_dir / f"{n}.sql").exists()]
    if missing:
        raise SpecError(f"{path} names SQL files that do not exist: {missing}")
    return spec


def _feature_name(raw: dict, loc: tuple) -> str | None:
    """`features[3] (account_age_days).range` instead of `features.3.range`."""
    if len(loc) >= 2 and loc[0] == "features" and isinstance(loc[1], int):
        try:
            name = raw["features"][loc[1]].get("name", "?")
        except (IndexError, AttributeError, KeyError, TypeError):
            return None
        return ".".join([f"features[{loc[1]}] ({name})", *map(str, loc[2:])])
    return None


SPEC: Spec = load_spec()
