"""Exceptions raised while building or running graphs."""


class ShapeError(ValueError):
    """A shape or dtype rule failed while building a graph.

    The message names the op, the operand shapes and the user's file:line.
    """


class NotDifferentiableError(ValueError):
    """A gradient was asked of an op that has none (argmax's integer index) or whose rule is not
    implemented (second derivatives through max pooling); names the op and the user's file:line."""


class NumericsError(FloatingPointError):
    """`check_numerics=True` found a non-finite value; names the node and its source line."""
