"""Prep: validate, clean and join raw files into processed rows, quarantining bad ones."""

from driftloop.prep.core import Prepared, SourceRead, prepare
from driftloop.prep.read import RawRead, read_raw

__all__ = ["Prepared", "RawRead", "SourceRead", "prepare", "read_raw"]
