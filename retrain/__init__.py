"""retrain: turn an ImageNet-pretrained backbone into a classifier for your own images."""

__version__ = "0.1.0"
