"""The study scripts imported as modules for their tests (``studies/`` is a folder of scripts, not a package)."""

import importlib.util
from pathlib import Path

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def load_study(name: str):
    """``studies/<name>.py`` as a fresh module (its ``main(argv)`` runs the study)."""
    spec = importlib.util.spec_from_file_location(name, STUDIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
