"""retrain: turn an ImageNet-pretrained backbone into a classifier for your own images.

    import retrain
    result = retrain.fit(data="photos", backbone="mobilenet_v2", alpha=0.35, image_size=96)
    model, labels = retrain.load(result.run)

The calls (retrain/api.py) import TensorFlow only when they run; the library reports through
the `retrain` logger (logging.basicConfig(level=logging.INFO) shows it).
"""

__version__ = "0.1.0"

from retrain.api import evaluate, export, fit, load, predict  # noqa: E402
from retrain.config import EvaluateConfig, ExportConfig, FitConfig, PredictConfig  # noqa: E402
from retrain.errors import RetrainError  # noqa: E402

__all__ = ["fit", "load", "evaluate", "predict", "export", "FitConfig", "EvaluateConfig", "ExportConfig",
           "PredictConfig", "RetrainError", "__version__"]
