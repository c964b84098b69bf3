"""The static/dynamic layer layout of a DySL backbone and its segments."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    """Static layer `static`, then dynamic layers `static+1 .. end-1`; `end` is the next
    static layer, or the number of layers for the last segment (a virtual boundary)."""

    static: int
    end: int

    @property
    def dynamic(self) -> range:
        return range(self.static + 1, self.end)


@dataclass(frozen=True)
class Layout:
    """Which of `num_layers` layers are static (always run); all others are dynamic.

    Layer 0 must be static (RECON: no dynamic layer precedes the first static one).
    """

    num_layers: int
    static: tuple[int, ...]

    def __post_init__(self) -> None:
        static = tuple(sorted(int(i) for i in self.static))
        object.__setattr__(self, 'static', static)
        if self.num_layers < 1:
            raise ValueError(f'num_layers={self.num_layers} is invalid: expected >= 1')
        if not static or static[0] != 0:
            raise ValueError(f'static={static} is invalid: layer 0 must be static')
        if len(set(static)) != len(static) or static[-1] >= self.num_layers:
            raise ValueError(f'static={static} is invalid: expected distinct layers in '
                             f'[0, {self.num_layers})')

    @property
    def segments(self) -> tuple[Segment, ...]:
        ends = self.static[1:] + (self.num_layers,)
        return tuple(Segment(s, e) for s, e in zip(self.static, ends))

    @property
    def dynamic(self) -> tuple[int, ...]:
        return tuple(j for seg in self.segments for j in seg.dynamic)

    def segment_of(self, layer: int) -> Segment:
        """The segment holding `layer`."""
        for seg in self.segments:
            if seg.static <= layer < seg.end:
                return seg
        raise ValueError(f'layer={layer} is outside [0, {self.num_layers})')

    @classmethod
    def full(cls, num_layers: int) -> 'Layout':
        """Every layer static: nothing can be skipped (the teacher's layout)."""
        return cls(num_layers, tuple(range(num_layers)))

    def to_dict(self) -> dict:
        return {'num_layers': self.num_layers, 'static': list(self.static)}

    @classmethod
    def from_dict(cls, d: dict) -> 'Layout':
        return cls(int(d['num_layers']), tuple(d['static']))
