"""ablate: measure how an injected branch changes the gradient reaching a model's adapters."""

__version__ = "0.2.0"
