"""Declaring ROS parameters from one table per node: description, range and choices each.

Each node lists its parameters as `Param`s; `declare_params` declares them all with a
ParameterDescriptor (description, integer / floating-point range, choices in
additional_constraints) and returns their values. Defaults here equal config/*.yaml (a test
checks it), so a node started without a parameters file behaves the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node



@dataclass(frozen=True)
class Param:
    """One ROS parameter: default value (its type is the parameter's type), description,
    inclusive range for numbers, allowed values for strings."""

    name: str
    default: Any
    description: str
    low: Optional[float] = None
    high: Optional[float] = None
    choices: tuple[str, ...] = ()
    read_only: bool = False

    def descriptor(self) -> ParameterDescriptor:
        d = ParameterDescriptor(name=self.name, description=self.description,
                                read_only=self.read_only)
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


def declare_params(node: Node, params: Sequence[Param]) -> dict[str, Any]:
    """Declare every parameter (overrides from files / launch apply) and return the values.

    Raises ValueError naming the parameter when a string is not one of its choices.
    """
    for p in params:
        if not node.has_parameter(p.name):
            node.declare_parameter(p.name, p.default, p.descriptor())
    return read_params(node, params)


def read_params(node: Node, params: Sequence[Param]) -> dict[str, Any]:
    """Current values of declared parameters (lists for arrays), choices checked."""
    values = {}
    for p in params:
        value = node.get_parameter(p.name).value
        if isinstance(value, (list, tuple)) or type(value).__name__ == 'array':
            value = list(value)
        if p.choices and value not in p.choices:
            raise ValueError(f'parameter {p.name}={value!r} is invalid: expected one of '
                             f'{list(p.choices)}')
        values[p.name] = value
    return values


def defaults(params: Sequence[Param]) -> dict[str, Any]:
    """name -> default, as a parameters file would list them."""
    return {p.name: p.default for p in params}


