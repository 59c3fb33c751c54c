"""Exceptions raised while building or running graphs."""


class ShapeError(ValueError):
    """A shape or dtype rule failed while building a graph.

    The message names the op, the operand shapes and the user's file:line.
    """


class NumericsError(FloatingPointError):
    """`check_numerics=True` found a non-finite value; names the node and its source line."""
