"""Schedules for epsilon (and later PER's beta): pure functions of a step counter."""

from __future__ import annotations


def linear(start: float, end: float, duration: float, t: float) -> float:
    """``start`` at t=0, straight line to ``end`` at t=duration, ``end`` afterwards."""
    if duration <= 0 or t >= duration:
        return end
    return start + max(t / duration, 0.0) * (end - start)


def exponential(start: float, end: float, decay: float, t: int) -> float:
    """``start * decay**t``, floored at ``end`` (the lesson's per-update epsilon decay)."""
    return max(end, start * decay**t)
