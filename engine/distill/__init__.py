"""Distillation methods: one module each, registered in engine.core.registry.METHODS."""

from engine.distill.base import Distiller, TeacherOut, build_distiller

__all__ = ["Distiller", "TeacherOut", "build_distiller"]
