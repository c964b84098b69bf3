"""Declaring ROS parameters from one table per node: description, range and choices each.

Each node lists its parameters as `Param`s; `declare_params` declares them all with a
ParameterDescriptor (description, integer / floating-point range, choices in
additional_constraints), refuses later invalid values when they are set (an on-set callback
answering with the reason: choices, ranges and each Param's own `check`) and returns their
values. Defaults here equal config/*.yaml (a test checks it), so a node started without a
parameters file behaves the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.node import Node

@dataclass(frozen=True)
class Param:
    """One ROS parameter: default value (its type is the parameter's type, unless
    dynamic_typing: needed for an empty list default, which rclpy would type as a byte
    array), description, inclusive range for numbers, allowed values for strings, and
    `check(value)` returning why a value is invalid (None when it is fine)."""

    name: str
    default: Any
    description: str
    low: Optional[float] = None
    high: Optional[float] = None
    choices: tuple[str, ...] = ()
    read_only: bool = False
    check: Optional[Callable[[Any], Optional[str]]] = None
    dynamic_typing: bool = False

    def problem(self, value: Any) -> Optional[str]:
        """Why `value` is invalid for this parameter, or None."""
        if self.choices and value not in self.choices:
            return f'{self.name}={value!r} is invalid: expected one of {list(self.choices)}'
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if numeric and self.low is not None and not self.low <= value <= self.high:
            return f'{self.name}={value!r} is invalid: expected {self.low} to {self.high}'
        reason = self.check(value) if self.check is not None else None
        return f'{self.name}={value!r} is invalid: {reason}' if reason else None

    def descriptor(self) -> ParameterDescriptor:
        d = ParameterDescriptor(name=self.name, description=self.description,
                                read_only=self.read_only, dynamic_typing=self.dynamic_typing)
        numeric = isinstance(self.default, (int, float)) and not isinstance(self.default, bool)
        if numeric and self.low is not None and self.high is not None:
            if isinstance(self.default, int):
                d.integer_range = [IntegerRange(from_value=int(self.low),
                                                to_value=int(self.high), step=0)]
            else:
                d.floating_point_range = [FloatingPointRange(
                    from_value=float(self.low), to_value=float(self.high), step=0.0)]
        if self.choices:
            d.additional_constraints = f'one of {list(self.choices)}'
        return d


def declare_params(node: Node, params: Sequence[Param], check: bool = True) -> dict[str, Any]:
    """Declare every parameter (overrides from files / launch apply), refuse invalid values
    set later, and return the current values: checked as read_params does, or with
    check=False as they are (a lifecycle node checks them at configure)."""
    for p in params:
        if not node.has_parameter(p.name):
            node.declare_parameter(p.name, p.default, p.descriptor())
    table = {p.name: p for p in params}

    def on_set(changes: list) -> SetParametersResult:
        for change in changes:
            p = table.get(change.name)
            reason = p.problem(_plain(change.value)) if p is not None else None
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)
    if check:
        return read_params(node, params)
    return {p.name: _plain(node.get_parameter(p.name).value) for p in params}


def read_params(node: Node, params: Sequence[Param]) -> dict[str, Any]:
    """Current values of declared parameters (lists for arrays); raises ValueError naming
    the first invalid one (values given at start skip the on-set check)."""
    values = {}
    for p in params:
        value = _plain(node.get_parameter(p.name).value)
        reason = p.problem(value)
        if reason:
            raise ValueError(f'parameter {reason}')
        values[p.name] = value
    return values


def _plain(value: Any) -> Any:
    """A parameter value with arrays as lists."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == 'array':
        return list(value)
    return value


def defaults(params: Sequence[Param]) -> dict[str, Any]:
    """name -> default, as a parameters file would list them."""
    return {p.name: p.default for p in params}
