"""Loading the policy a bag tool runs, as the policy node loads it, without ROS."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

BACKENDS = ('torch', 'onnxruntime', 'tensorrt')


def open_policy(model: Optional[Path | str], backend: str = 'torch', method: str = 'dysl',
                device: str = 'cpu', threads: int = 0,
                guidance: Optional[Mapping[str, Any]] = None) -> Any:
    """The Policy the policy node would run with these parameters (model_path, backend,
    method, device, ort_threads); model None means models/default; guidance replaces stored
    guidance settings (executed_actions, ...)."""
    from ..paths import default_model_dir
    from ..runtime.loading import open_policy as open_runtime_policy
    if backend not in BACKENDS:
        raise ValueError(f'backend={backend!r} is invalid: expected one of {BACKENDS}')
    options = {'threads': threads} if backend == 'onnxruntime' else {}
    return open_runtime_policy(Path(model) if model else default_model_dir(), backend, method,
                               device, guidance=guidance, **options)


def full_depth_twin(policy: Any) -> Any:
    """A full-depth GuidedPolicy over the same runner and weights as `policy` (the reference
    'full-depth prediction made on the spot'); None when the policy has no runner."""
    from ..guidance import GuidanceConfig
    from ..runtime.policy import GuidedPolicy
    runner = getattr(policy, 'runner', None)
    if runner is None:
        return None
    # a wrapping runner (random-skip's coins) only acts when skipping: use what it wraps
    runner = getattr(runner, 'base', runner)
    # skipping=False walks every layer of the layout and asks no controller
    spec = policy.spec
    return GuidedPolicy(runner, spec, GuidanceConfig(), skipping=False)


def guidance_of(policy: Any) -> Any:
    """The policy's Guidance (continuity ring buffer, allow points), or None."""
    return getattr(policy, 'guidance', None)


def recorded_guidance(info: Optional[dict]) -> Optional[dict]:
    """Guidance settings a policy bag was recorded with (`record` stores how many actions of
    each chunk ran, which is how many enter the continuity history); None for other bags."""
    if not info or info.get('source') != 'policy' or 'execute' not in info:
        return None
    return {'executed_actions': int(info['execute'])}
