"""siamgrad: Siamese self-supervised learning under one unified gradient."""

__version__ = "0.1.0"
