"""kdtui: a terminal experiment manager for knowledge distillation."""

__version__ = "0.1.0"
