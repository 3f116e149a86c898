"""Helpers shared by ShapeFirst's nodes: error messages, validation, logging."""

from __future__ import annotations

import logging

LOGGER = logging.getLogger("shapefirst")

CATEGORY = "ShapeFirst"
# Namespaced keys for wrappers and transformer_options entries.
KEY_PREFIX = "shapefirst."


class ShapeFirstInputError(ValueError):
    """A bad input, with a message that names the node and says how to fix it."""

    def __init__(self, node: str, message: str):
        super().__init__(f"{node}: {message}")
        self.node = node


def check_fraction_open(node: str, name: str, value: float) -> None:
    """Raise unless 0 < value < 1."""
    if value is None or not (0.0 < float(value) < 1.0):
        raise ShapeFirstInputError(node, f"{name} must be strictly between 0 and 1 (got {value}); "
                                         "use e.g. 0.2 for the lowest 20% of the spectrum, as in the paper.")


def as_validation(check, *args) -> bool | str:
    """Run a ``check`` that raises ShapeFirstInputError; return what validate_inputs must answer."""
    try:
        check(*args)
    except ShapeFirstInputError as exc:
        return str(exc)
    return True
