"""The MLflow pyfunc wrapper of a driftloop model (kept apart so serving never imports MLflow).

MLflow executes ``mlflow_model_code.py`` when it loads a registered model; that file builds
this wrapper, which loads the package folder into a :class:`~driftloop.models.package.Predictor`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from driftloop.models.package import Predictor

with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
    # MLflow inspects predict's type hints when the class is made and prints advice about
    # them (forcing the warning through its own filter); the signature is logged explicitly
    # (input_signature), so the advice does not apply.
    warnings.simplefilter("ignore", UserWarning)

    class DriftloopModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
        """MLflow pyfunc: raw records in, predictions out."""

        def load_context(self, context: Any) -> None:
            self.predictor = Predictor(Path(context.artifacts["driftloop"]))

        def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
            return self.predictor.predict(model_input).to_pandas()
