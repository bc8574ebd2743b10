"""Prep: validate, clean and join raw files into processed rows, quarantining bad ones."""

from driftloop.prep.core import Prepared, PrepPlan, SourceRead, plan_prep, prepare, rows_per_file
from driftloop.prep.read import RawRead, read_raw

__all__ = [
    "PrepPlan",
    "Prepared",
    "RawRead",
    "SourceRead",
    "plan_prep",
    "prepare",
    "read_raw",
    "rows_per_file",
]
