"""Kept so that models registered before the package layout of 0.3 still load in MLflow: their
stored model-from-code file imports the wrapper from here. New models name
:mod:`driftloop.models.pyfunc`."""

from driftloop.models.pyfunc import DriftloopModel

__all__ = ["DriftloopModel"]
