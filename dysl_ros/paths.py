"""Where the package's own files are: the source tree, or the ROS share when installed."""
from __future__ import annotations

from pathlib import Path

PACKAGE = 'dysl_ros'
# A model directory's JSON files (model.io writes them beside their safetensors weights).
VLA_JSON, DYSL_JSON = 'vla.json', 'dysl.json'
DISTILL_JSON = 'distill.json'  # the main DySL's distillation record (its budget, its cost)


def package_path(*parts: str) -> Path:
    """A file of this package: the source tree when running from it, else the ROS share."""
    here = Path(__file__).resolve().parents[1].joinpath(*parts)
    if here.exists():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE)).joinpath(*parts)
    except Exception:  # not installed as a ROS package: report the source-tree path
        return here


def default_model_dir() -> Path:
    """The embedded default model (models/default)."""
    return package_path('models', 'default')
