"""sparring: attack, adversarially train and evaluate PyTorch models."""

__version__ = "0.1.0"
