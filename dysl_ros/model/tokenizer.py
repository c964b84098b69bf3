"""A word-level instruction tokenizer that ships inside the model's JSON."""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

PAD, UNK = '<pad>', '<unk>'
_WORD = re.compile(r"[a-z0-9]+")

# Words of the embedded tasks plus common manipulation vocabulary, so that paraphrases
# map to known tokens where they can and to <unk> otherwise.
DEFAULT_WORDS = (
    'pick up lift grasp grab take the a an red blue green yellow block cube object '
    'push move slide to left right forward back open close pull drawer handle '
    'put place on in into of and then it please'
).split()


class WordTokenizer:
    """Lower-cases, splits on non-alphanumerics, maps unknown words to <unk>, pads to length."""

    def __init__(self, vocab: Sequence[str], max_tokens: int):
        if list(vocab[:2]) != [PAD, UNK]:
            raise ValueError(f'vocab must start with {PAD!r}, {UNK!r}; got {list(vocab[:2])}')
        if len(set(vocab)) != len(vocab):
            raise ValueError('vocab has duplicate words')
        self.vocab = tuple(vocab)
        self.max_tokens = max_tokens
        self._ids = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def from_words(cls, words: Iterable[str], max_tokens: int) -> 'WordTokenizer':
        """Build a vocabulary from words (deduplicated, order kept)."""
        vocab = [PAD, UNK]
        for w in words:
            for piece in _WORD.findall(w.lower()):
                if piece not in vocab:
                    vocab.append(piece)
        return cls(vocab, max_tokens)

    def words(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())

    def encode(self, text: str) -> np.ndarray:
        """Token ids (max_tokens,) int64; long instructions are truncated, short ones padded."""
        ids = [self._ids.get(w, 1) for w in self.words(text)][:self.max_tokens]
        out = np.zeros(self.max_tokens, dtype=np.int64)
        out[:len(ids)] = ids
        return out

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in self.words(text) if w not in self._ids]

    def __len__(self) -> int:
        return len(self.vocab)
