"""The dashboard's modal screens, one module each."""

from .compare import CompareScreen
from .export import ExportScreen
from .help import HelpScreen
from .run_form import RunForm

__all__ = ["CompareScreen", "ExportScreen", "HelpScreen", "RunForm"]
