"""The default VLA, the DySL wrapper over any block stack, and their save/load."""
from typing import Any

from .config import ACTION_NAMES, DySLConfig, VLAConfig
from .tokenizer import WordTokenizer

__all__ = ['ACTION_NAMES', 'DySL', 'DySLConfig', 'VLA', 'VLAConfig', 'WordTokenizer']


def __getattr__(name: str) -> Any:
    # The torch modules load on first use, so an exported model runs on ONNX Runtime
    # (configs, tokenizer) without torch installed.
    if name == 'DySL':
        from .dysl import DySL
        return DySL
    if name == 'VLA':
        from .vla import VLA
        return VLA
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
