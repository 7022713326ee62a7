"""Summaries of repeated timings (torch-free, shared by every bench part)."""

from __future__ import annotations

import statistics


def median_spread(values: list[float]) -> dict:
    """Median with the spread: on a shared box one figure alone says little."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }
