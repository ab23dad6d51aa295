"""The dashboard's panels, one module each; every panel draws a RunView and does no work of its own."""

from .base import Panel, Plot
from .cpu import CpuPanel
from .latency import LatencyPanel
from .memory import MemoryPanel, PhaseBands
from .runs import RunsPanel
from .scores import ScoresPanel
from .status import StatusBar
from .training import TrainingPanel, has_training

__all__ = ["CpuPanel", "LatencyPanel", "MemoryPanel", "Panel", "PhaseBands", "Plot", "RunsPanel", "ScoresPanel", "StatusBar", "TrainingPanel",
           "has_training"]
