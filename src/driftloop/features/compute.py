"""Features: one function of Polars expressions from processed rows to model columns.

The same :func:`build_features` runs on a whole batch and on a single request record, so
there is no training/serving skew. Every built-in is row-wise (no statistics across rows);
a user's function must be row-wise too, which the parity test checks on real data.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from driftloop.core.errors import FeatureError
from driftloop.core.spec import FeaturesSpec, Spec

_DATE_PARTS: dict[str, Callable[[pl.Expr], pl.Expr]] = {
    "year": lambda c: c.dt.year(),
    "quarter": lambda c: c.dt.quarter(),
    "month": lambda c: c.dt.month(),
    "day": lambda c: c.dt.day(),
    "weekday": lambda c: c.dt.weekday(),
    "dayofyear": lambda c: c.dt.ordinal_day(),
    "hour": lambda c: c.dt.hour(),
    "minute": lambda c: c.dt.minute(),
}

UserFunction = Callable[[pl.LazyFrame], Any]


def builtin_expressions(spec: FeaturesSpec) -> list[pl.Expr]:
    """The spec's built-in features as named expressions."""
    exprs: list[pl.Expr] = []
    for column, parts in spec.datetime_parts.items():
        for part in parts:
            exprs.append(_DATE_PARTS[part](pl.col(column)).cast(pl.Int32).alias(f"{column}_{part}"))
    for ratio in spec.ratios:
        den = pl.col(ratio.denominator).cast(pl.Float64)
        exprs.append(
            pl.when(den != 0)
            .then(pl.col(ratio.numerator).cast(pl.Float64) / den)
            .otherwise(None)
            .alias(ratio.name)
        )
    for column in spec.logs:
        value = pl.col(column).cast(pl.Float64)
        exprs.append(
            pl.when(value > -1).then(value.log1p()).otherwise(None).alias(f"log1p_{column}")
        )
    for bucket in spec.buckets:
        exprs.append(
            _bucket(pl.col(bucket.column).cast(pl.Float64), list(bucket.edges)).alias(
                bucket.name or f"{bucket.column}_bucket"
            )
        )
    return exprs


def _bucket(value: pl.Expr, edges: list[float]) -> pl.Expr:
    """Right-closed intervals ``(lo, hi]`` as string labels; null stays null."""
    bounds = list(zip([-math.inf, *edges], [*edges, math.inf], strict=True))
    expr: Any = pl.when(value.is_null()).then(pl.lit(None, pl.String))
    for lo, hi in bounds[:-1]:
        expr = expr.when(value <= hi).then(pl.lit(_bucket_label(lo, hi)))
    result: pl.Expr = expr.otherwise(pl.lit(_bucket_label(*bounds[-1])))
    return result


def _bucket_label(lo: float, hi: float) -> str:
    def fmt(v: float) -> str:
        return "inf" if v == math.inf else "-inf" if v == -math.inf else f"{v:g}"

    return f"({fmt(lo)}, {fmt(hi)}]"


def user_module_path(reference: str, project: Path) -> Path:
    """The file a ``module:function`` reference points at, inside the project folder (or a
    model package's code folder): ``pkg.feats`` is ``<project>/pkg/feats.py``.

    A module that resolves outside that folder is refused: a leading dot or an absolute
    part (``.tmp.x`` was ``/tmp/x.py``) or a symbolic link that leaves it. Such a module
    ran in ``run`` and ``serve`` but was never packaged with the model; a model runs only the
    code it carries.
    """
    module_name = reference.partition(":")[0]
    parts = module_name.split(".")
    fix = (
        "put the module in the project folder and name it by its path there without '.py' "
        "(features.py: 'features:build'; pkg/feats.py: 'pkg.feats:build')"
    )
    if not all(p.isidentifier() for p in parts):
        raise FeatureError(
            f"features.function {reference!r}: the module {module_name!r} is not a dotted "
            f"name of a file inside the project folder {project}; {fix}"
        )
    path = project.joinpath(*parts[:-1], parts[-1] + ".py")
    root = project.resolve()
    if path.exists() and not path.resolve().is_relative_to(root):
        raise FeatureError(
            f"features.function {reference!r}: the module file {path} leads outside the "
            f"project folder (to {path.resolve()}); a model carries only code from inside "
            f"it, so this module would run here and be missing where the model is served; {fix}"
        )
    return path


def load_user_function(reference: str, project: Path) -> UserFunction:
    """Load ``module:function`` from its file in the project folder.

    The file is executed afresh on every call (never taken from ``sys.modules``), so an
    edited module is what runs, and two projects with the same module name do not collide.
    The project folder is on the import path while it runs, for its own imports.
    """
    module_name, _, func_name = reference.partition(":")
    path = user_module_path(reference, project)
    if not path.is_file():
        raise FeatureError(
            f"features.function {reference!r}: cannot import module {module_name!r}: no file "
            f"{path}; put the module in the project folder"
        )
    source = path.read_bytes()
    unique = f"_driftloop_features_{hashlib.sha256(source + bytes(path)).hexdigest()[:16]}"
    module_spec = importlib.util.spec_from_file_location(unique, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    root = str(project.resolve())
    added = root not in sys.path
    if added:
        sys.path.insert(0, root)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise FeatureError(
            f"features.function {reference!r}: importing {path} raised "
            f"{type(exc).__name__}: {exc}; fix the module"
        ) from exc
    finally:
        if added:
            sys.path.remove(root)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise FeatureError(
            f"features.function {reference!r}: module {module_name!r} has no function "
            f"{func_name!r}; define 'def {func_name}(frame: pl.LazyFrame) -> pl.LazyFrame'"
        )
    return func  # type: ignore[no-any-return]


def build_features(
    frame: pl.LazyFrame,
    spec: Spec,
    user_function: UserFunction | None = None,
    builtins: list[pl.Expr] | None = None,
) -> pl.LazyFrame:
    """Processed rows -> model columns: built-ins, then the user's function, minus excluded.

    ``builtins`` are :func:`builtin_expressions` of the spec, when the caller keeps them
    (serving builds them once per model, not once per request).
    """
    return features_with_delta(frame, spec, user_function, builtins)[0]


def features_with_delta(
    frame: pl.LazyFrame,
    spec: Spec,
    user_function: UserFunction | None = None,
    builtins: list[pl.Expr] | None = None,
) -> tuple[pl.LazyFrame, list[str] | None]:
    """The model columns, and which of them the features computed (new or replaced).

    The second value is None when that is unknown: a user function that returns a whole
    frame may have changed any column.
    """
    if builtins is None:
        builtins = builtin_expressions(spec.features)
    out = frame.with_columns(builtins)
    added: list[str] | None = [e.meta.output_name() for e in builtins]
    if user_function is not None:
        out, names = _apply_user(out, user_function, spec.features.function or "")
        added = None if names is None else [*(added or []), *names]
    drop = list(spec.features.exclude)
    if added is not None:
        added = [c for c in dict.fromkeys(added) if c not in drop]
    # strict=False: an excluded column a user's function already removed is no error (and
    # no schema has to be resolved to find out, which costs more than the features on a
    # single request)
    return (out.drop(drop, strict=False) if drop else out), added


def _apply_user(
    frame: pl.LazyFrame, func: UserFunction, name: str
) -> tuple[pl.LazyFrame, list[str] | None]:
    try:
        result = func(frame)
    except Exception as exc:
        raise FeatureError(
            f"features.function {name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(result, pl.DataFrame):
        return result.lazy(), None
    if isinstance(result, pl.LazyFrame):
        return result, None
    if isinstance(result, pl.Expr):
        result = [result]
    if isinstance(result, Mapping):
        result = [expr.alias(key) for key, expr in result.items()]
    if isinstance(result, Sequence) and all(isinstance(e, pl.Expr) for e in result):
        exprs = list(result)
        return frame.with_columns(exprs), [e.meta.output_name() for e in exprs]
    raise FeatureError(
        f"features.function {name!r} returned {type(result).__name__}; expected a LazyFrame, "
        "a DataFrame, or Polars expressions (a list or a name->expression mapping)"
    )


def features_for_records(
    records: Sequence[Mapping[str, Any]],
    spec: Spec,
    schema: Mapping[str, pl.DataType],
    user_function: UserFunction | None = None,
) -> pl.DataFrame:
    """The serving path: typed raw records (as dicts) -> the same feature columns."""
    frame = pl.DataFrame(list(records), schema=dict(schema), strict=False)
    return build_features(frame.lazy(), spec, user_function).collect()
