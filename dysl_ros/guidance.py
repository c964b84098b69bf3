"""Prior-post skipping guidance: action continuity, skipping-allow points, verification trigger.

numpy only. One Guidance per episode stream drives every backend (torch, ONNX Runtime,
TensorRT): the backend asks it where each segment's controllers may start deciding
(allow_points) and whether a chunk predicted with skipping must be re-predicted without
(is_onset). See design/dysl-method.md, section 2; the onset rule deviates from it with a
margin (RECON, Guidance.is_onset).

Typical control step:

    points = guidance.allow_points                      # pre-skip prediction (from the last push)
    chunk, skipped = run_backbone(obs, points)          # (H, D) normalised actions
    if skipped and guidance.is_onset(chunk):            # post-skip verification
        chunk, _ = run_backbone(obs, None)              # no skipping
    guidance.push(chunk)                                # commit; updates C, dC and the points
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

CHUNK_POLICIES = ('worst', 'last')


@dataclass(frozen=True)
class GuidanceConfig:
    """Prior-post skipping guidance (dysl-method.md section 2).

    Args:
        tau: continuity-drop threshold, > 0. Calibrate it on demonstrations with calibrate_tau
            and store it with the model; 1.0 is a placeholder, not a calibrated value.
        history: K, the number of action differences averaged by the continuity (FOUND: 5).
        adaptive_stride: move points forward by s = max(1, floor(|dC| / tau)) (FOUND: adaptive
            beats every constant stride); False uses fixed_stride (ablation).
        fixed_stride: the constant forward stride when adaptive_stride is False, >= 1.
        release_step: layers a point moves back per step without a drop (RECON hysteresis,
            default 1: release slowly, protect fast).
        pre_skip: pre-skip prediction; False keeps every point at S_k + 1 (ablation 'no
            pre-skip prediction'). C and dC are still tracked, so verification still works.
        verify: post-skip verification; False makes is_onset always False (ablation).
        drop_margin: RECON, default 0.5. For the verification onset a step is a 'drop' when
            dC < -drop_margin * tau, and an onset when the previous dC was not a drop. Without
            a margin, float noise (~1e-16) and jitter in steady motion, whose dC changes sign
            every other step, would make half the steps onsets and verification would no longer
            be rare. Half of tau sits well above that jitter (tau is calibrated high in the |dC|
            distribution) yet still catches the first step of a real drop, which is often
            milder than its peak (a stop ramps in): with a margin of 1 that first step would
            slip through and pre-skip would only react a step later. In (0, 1]: above 1 a drop
            could move the points without its first step ever being verified.
        release_margin: RECON, default 0.0 (the paper's rule). Points move back only when every
            dC in the chunk is >= -release_margin * tau. With 0, any negative dC blocks the
            release, so with jittery predictions and long chunks (H = 8: all 8 non-negative has
            probability ~2**-8) points may never come back; raise it (e.g. to drop_margin) for
            such policies. In [0, 1].
        executed_actions: RECON, default 0. How many leading actions of each chunk enter the
            history: those the robot executes before the next inference. 0 takes the whole
            chunk (open-loop chunk execution, as OpenVLA-OFT runs its 8 actions). When a new
            chunk replaces the old one after k actions, the unexecuted tail would sit in the
            history beside the new chunk's head, and the jump between them reads as a
            continuity drop that no motion made: set it to k.
        chunk_policy: RECON, default 'worst': the most alarming dC in a chunk moves the points
            forward and every dC must pass the release test to move them back. 'last' uses only
            the chunk's last dC (what the next step starts from). Verification always looks at
            every action of the chunk.
    """

    tau: float = 1.0  # continuity-drop threshold; calibrated on demos and stored with the model
    history: int = 5  # K (FOUND)
    adaptive_stride: bool = True  # s = max(1, floor(|dC| / tau)) (FOUND); False -> fixed_stride
    fixed_stride: int = 1
    release_step: int = 1  # slow release when no drop (RECON hysteresis)
    pre_skip: bool = True  # ablation 'no pre-skip prediction': P stays at S_k + 1
    verify: bool = True  # ablation 'no verification'
    drop_margin: float = 0.5  # RECON: onset drop is dC < -drop_margin * tau
    release_margin: float = 0.0  # RECON: release when every dC >= -release_margin * tau
    chunk_policy: str = 'worst'  # RECON: 'worst' | 'last'
    executed_actions: int = 0  # RECON: leading actions per chunk in the history (0: all)

    def __post_init__(self) -> None:
        _check_real('tau', self.tau, low=0.0, low_open=True)
        _check_int('history', self.history, 1)
        for name in ('adaptive_stride', 'pre_skip', 'verify'):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f'{name} must be a bool, got {value!r}')
        _check_int('fixed_stride', self.fixed_stride, 1)
        _check_int('release_step', self.release_step, 1)
        _check_real('drop_margin', self.drop_margin, low=0.0, low_open=True, high=1.0)
        _check_real('release_margin', self.release_margin, low=0.0, high=1.0)
        _check_int('executed_actions', self.executed_actions, 0)
        if self.chunk_policy not in CHUNK_POLICIES:
            raise ValueError(f'chunk_policy must be one of {CHUNK_POLICIES}, '
                             f'got {self.chunk_policy!r}')


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Command-line KEY=VALUE strings -> GuidanceConfig fields, typed as the config declares
    them (ValueError naming the bad item). Values are range-checked when a config is built."""
    fields = {f.name: type(getattr(GuidanceConfig(), f.name))
              for f in dataclasses.fields(GuidanceConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep or key not in fields:
            raise ValueError(f'--guidance {item!r}: expected KEY=VALUE with KEY one of '
                             f'{sorted(fields)}')
        kind = fields[key]
        if kind is bool:
            if value.lower() not in ('true', 'false'):
                raise ValueError(f'--guidance {item!r}: expected true or false')
            out[key] = value.lower() == 'true'
        else:
            try:
                out[key] = kind(value)
            except ValueError:
                raise ValueError(f'--guidance {item!r}: {value!r} is not a {kind.__name__}'
                                 ) from None
    return out


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f'{name} must be an int >= {low}, got {value!r}')
    if value < low:
        raise ValueError(f'{name} must be >= {low}, got {value!r}')


def _check_real(name: str, value: Any, low: float, low_open: bool = False,
                high: float = math.inf) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f'{name} must be a number, got {value!r}')
    bad_low = value <= low if low_open else value < low
    if not math.isfinite(value) or bad_low or value > high:
        lo = '(' if low_open else '['
        hi = ')' if math.isinf(high) else ']'
        raise ValueError(f'{name} must be in {lo}{low}, {high}{hi}, got {value!r}')


def _continuity(window: np.ndarray) -> float | None:
    """Eq. 1 on the last <= K + 1 actions: C = -mean ||a_i - a_{i-1}||_2, None below 2 actions."""
    if window.shape[0] < 2:
        return None
    d = np.diff(window, axis=0)  # (n - 1, D)
    return -float(np.linalg.norm(d, axis=1).mean())


def _step(buf: np.ndarray | None, c: float | None, action: np.ndarray,
          history: int) -> tuple[np.ndarray, float | None, float | None]:
    """Append one action to the ring buffer (never in place); return (buffer, C, dC)."""
    a = action[None]  # (1, D)
    # K + 1 actions give K differences; early in an episode C averages the ones available.
    buf = a if buf is None else np.concatenate([buf, a])[-(history + 1):]  # (<= K + 1, D)
    c_new = _continuity(buf)
    dc = None if c is None or c_new is None else c_new - c
    return buf, c_new, dc


def _as_actions(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """Validate a (T, D) array of finite normalised actions; return it as float64."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f'{name} must be a non-empty (H, D) array of actions, got shape '
                         f'{a.shape}; pass a single action as action[None]')
    if not np.isfinite(a).all():
        raise ValueError(f'{name} contains non-finite values')
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f'{name} has action size D={a.shape[1]} but the history holds '
                         f'D={dim}; call reset() between episodes of different robots')
    return a


def continuity_series(actions: np.ndarray, history: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """C and dC after each action of a (T, D) trajectory (NaN while undefined), as pushed."""
    _check_int('history', history, 1)
    a = _as_actions(actions, 'actions')  # (T, D)
    c_out = np.full(a.shape[0], np.nan)  # (T,)
    dc_out = np.full(a.shape[0], np.nan)  # (T,)
    buf, c = None, None
    for t in range(a.shape[0]):
        buf, c, dc = _step(buf, c, a[t], history)
        if c is not None:
            c_out[t] = c
        if dc is not None:
            dc_out[t] = dc
    return c_out, dc_out


def calibrate_tau(action_episodes: Sequence[np.ndarray], history: int = 5,
                  percentile: float = 85.0, noise_floor: float = 1e-6) -> float:
    """tau = the percentile of |dC| over the steps with dC < -noise_floor, across episodes.

    RECON (dysl-method.md: 80-90th percentile over steps where dC < 0). noise_floor drops the
    float-noise dCs of perfectly steady motion (a scripted expert at constant velocity gives
    dC = +-1e-17), which would otherwise outnumber the real drops and calibrate tau to ~0.
    """
    _check_real('percentile', percentile, low=0.0, low_open=True, high=100.0)
    _check_real('noise_floor', noise_floor, low=0.0)
    if len(action_episodes) == 0:
        raise ValueError('calibrate_tau needs at least one episode, got none')
    drops = []
    for i, episode in enumerate(action_episodes):
        _, dc = continuity_series(_as_actions(episode, f'action_episodes[{i}]'), history)
        drops.append(-dc[dc < -noise_floor])  # NaN compares False: undefined steps drop out
    drops = np.concatenate(drops)
    if drops.size == 0:
        raise ValueError(f'nothing to calibrate tau on: no step with dC < -{noise_floor} in '
                         f'{len(action_episodes)} episode(s); need episodes of >= 3 actions '
                         'whose continuity drops (stops, grasps)')
    return float(np.percentile(drops, percentile))


def _check_segments(segments: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Segments must be contiguous (S_k, E_k) with E_k = S_{k+1} and E_k >= S_k + 1."""
    out = []
    for k, seg in enumerate(segments):
        if not isinstance(seg, (tuple, list, np.ndarray)) or len(seg) != 2:
            raise ValueError(f'segments[{k}] must be (S_k, E_k), got {seg!r}')
        s, e = seg
        _check_int(f'segments[{k}] start', s, 0)
        _check_int(f'segments[{k}] end', e, int(s) + 1)
        if out and int(s) != out[-1][1]:
            raise ValueError(f'segments[{k}] starts at {s} but segments[{k - 1}] ends at '
                             f'{out[-1][1]}; segments must be contiguous (E_k = S_(k+1))')
        out.append((int(s), int(e)))
    if not out:
        raise ValueError('segments must hold at least one (S_k, E_k), got none')
    return tuple(out)


class Guidance:
    """Skipping-allow points P_k from the continuity of recent actions, plus the onset check.

    For segment k = (S_k, E_k), layers S_k + 1 .. P_k - 1 are forced to run and the
    controllers of layers P_k .. E_k - 1 decide; P_k lives in [S_k + 1, E_k] and P_k == E_k
    forces the whole segment. A segment with no dynamic layer (E_k == S_k + 1) keeps P_k = E_k.
    """

    def __init__(self, cfg: GuidanceConfig, segments: Sequence[tuple[int, int]]) -> None:
        if not isinstance(cfg, GuidanceConfig):
            raise ValueError(f'cfg must be a GuidanceConfig, got {type(cfg).__name__}')
        self.cfg = cfg
        self.segments = _check_segments(segments)
        self._low = np.array([s + 1 for s, _ in self.segments], dtype=np.int64)  # (n_seg,)
        self._high = np.array([e for _, e in self.segments], dtype=np.int64)  # (n_seg,)
        self.reset()

    @property
    def allow_points(self) -> np.ndarray:
        """Current P_k per segment (a copy)."""
        return self._points.copy()

    @property
    def protecting(self) -> bool:
        """Whether a continuity drop holds some P_k past S_k + 1 (until released)."""
        return bool((self._points > self._low).any())

    def continuity(self) -> tuple[float | None, float | None]:
        """The last (C, dC); None while undefined."""
        return self._c, self._dc

    def reset(self) -> None:
        """New episode: empty the ring buffer and set every P_k = S_k + 1."""
        self._buf: np.ndarray | None = None  # (<= K + 1, D) last actions, oldest first
        self._c: float | None = None
        self._dc: float | None = None
        self._points = self._low.copy()  # (n_seg,)

    def is_onset(self, chunk: np.ndarray) -> bool:
        """True when verify is on and an action of this uncommitted (H, D) chunk starts a drop.

        RECON, deviating from dysl-method.md section 2, whose onset is a sign change,
        dC_t < 0 <= dC_{t-1}. Here a step is a drop when dC < -drop_margin * tau and an onset
        is a drop after a step that was not one: dC_t < -m * tau <= dC_{t-1} (m =
        drop_margin; see GuidanceConfig for why). The doc's rule is its limit m -> 0, which
        the config refuses. It differs both ways: a dip shallower than m * tau after steady
        motion is not verified, and a drop past m * tau right after a shallow negative dC is.
        """
        a = self._executed(chunk)  # (n, D)
        if not self.cfg.verify:
            return False
        threshold = -self.cfg.drop_margin * self.cfg.tau
        buf, c, prev = self._buf, self._c, self._dc
        for action in a:
            buf, c, dc = _step(buf, c, action, self.cfg.history)
            # both dCs must exist: no onset before the episode has two continuity values
            if dc is not None and prev is not None and dc < threshold <= prev:
                return True
            prev = dc
        return False

    def push(self, chunk: np.ndarray) -> None:
        """Commit an (H, D) chunk: update C, dC per action, then every P_k for the next step."""
        a = self._executed(chunk)  # (n, D)
        dcs = []
        for action in a:
            self._buf, self._c, self._dc = _step(self._buf, self._c, action, self.cfg.history)
            if self._dc is not None:
                dcs.append(self._dc)
        if self.cfg.pre_skip and dcs:  # points stay put until dC is defined
            self._update_points(dcs[-1:] if self.cfg.chunk_policy == 'last' else dcs)

    def _update_points(self, dcs: list[float]) -> None:
        cfg = self.cfg
        worst = min(dcs)
        if worst < -cfg.tau:  # continuity dropped: protect, move deep fast
            if cfg.adaptive_stride:
                stride = max(1, math.floor(abs(worst) / cfg.tau))
            else:
                stride = cfg.fixed_stride
            self._points = np.minimum(self._points + stride, self._high)
        elif worst >= -cfg.release_margin * cfg.tau:  # recovered: release slowly
            self._points = np.maximum(self._points - cfg.release_step, self._low)

    def _executed(self, chunk: np.ndarray) -> np.ndarray:
        """The chunk's actions that enter the history (cfg.executed_actions; 0: all)."""
        a = _as_actions(chunk, 'chunk', self._dim())  # (H, D)
        n = self.cfg.executed_actions
        return a[:n] if n else a

    def _dim(self) -> int | None:
        return None if self._buf is None else self._buf.shape[1]

    def state_dict(self) -> dict:
        """Plain numpy/python state for exact replay: ring buffer, last C and dC, points."""
        buf = np.zeros((0, 0)) if self._buf is None else self._buf.copy()
        return {
            'buffer': buf,  # (n <= K + 1, D) float64, oldest first
            'c': self._c,
            'dc': self._dc,
            'allow_points': self._points.copy(),  # (n_seg,) int64
            'history': self.cfg.history,
            'segments': [list(s) for s in self.segments],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict taken from a Guidance with the same history and segments."""
        missing = {'buffer', 'c', 'dc', 'allow_points', 'history', 'segments'} - set(state)
        if missing:
            raise ValueError(f'guidance state is missing {sorted(missing)}')
        if state['history'] != self.cfg.history:
            raise ValueError(f"state history {state['history']!r} != cfg.history "
                             f'{self.cfg.history}')
        if [tuple(s) for s in state['segments']] != list(self.segments):
            raise ValueError(f"state segments {state['segments']!r} != {list(self.segments)}")
        buf = np.asarray(state['buffer'], dtype=np.float64)
        if buf.size == 0:
            buf = None
        else:
            buf = _as_actions(buf, 'state buffer').copy()
            if buf.shape[0] > self.cfg.history + 1:
                raise ValueError(f'state buffer holds {buf.shape[0]} actions, more than '
                                 f'history + 1 = {self.cfg.history + 1}')
        points = np.asarray(state['allow_points'])
        if (points.shape != self._low.shape or not np.issubdtype(points.dtype, np.integer)
                or (points < self._low).any() or (points > self._high).any()):
            raise ValueError(f'state allow_points {points!r} must be ints in [S_k + 1, E_k] '
                             f'for segments {list(self.segments)}')
        c, dc = state['c'], state['dc']
        for name, value in (('c', c), ('dc', dc)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f'state {name} must be None or finite, got {value!r}')
        self._buf = buf
        self._c = None if c is None else float(c)
        self._dc = None if dc is None else float(dc)
        self._points = points.astype(np.int64)
