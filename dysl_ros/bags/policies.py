"""What the bag tools ask of a policy beyond opening it (runtime.loading.open_policy opens
it, as the policy node does): its full-depth twin, its guidance, the guidance it was recorded
with."""
from __future__ import annotations

from typing import Any, Optional


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
