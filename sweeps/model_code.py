"""What MLflow runs to load a gradreg posterior model ("models from code": no pickle)."""

from mlflow.models import set_model

from sweeps.model import PosteriorModel

set_model(PosteriorModel())
