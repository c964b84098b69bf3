"""The default VLA, the DySL wrapper over any block stack, and their save/load."""
from .config import ACTION_NAMES, DySLConfig, VLAConfig
from .dysl import DySL
from .layout import Layout, Segment
from .tokenizer import WordTokenizer
from .vla import VLA

__all__ = ['ACTION_NAMES', 'DySL', 'DySLConfig', 'Layout', 'Segment', 'VLA', 'VLAConfig',
           'WordTokenizer']
