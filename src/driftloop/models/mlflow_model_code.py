"""The model-from-code file MLflow stores with every driftloop model (no pickled object).

MLflow executes this file when it loads the model; it needs the driftloop package installed.
"""

import mlflow

from driftloop.models.pyfunc import DriftloopModel

mlflow.models.set_model(DriftloopModel())
