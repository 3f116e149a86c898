"""The one graph builder of the tests and the workflow specs, on ComfyUI's own GraphBuilder.

Nodes get ids "1", "2", ... in the order they are added; ``node.out(slot)`` is the link
``[id, slot]`` that another node's input takes. ComfyUI must be importable (booted) first.
"""

from __future__ import annotations


def _graph_utils():
    from comfy_execution import graph_utils

    return graph_utils


class Graph:
    """An API-format graph: ``node(...)`` adds a node, ``prompt()`` gives what the executor runs."""

    def __init__(self):
        self._builder = _graph_utils().GraphBuilder(prefix="")

    def node(self, class_type: str, **inputs):
        return self._builder.node(class_type, **inputs)

    @property
    def nodes(self) -> list:
        """The nodes in the order they were added."""
        return list(self._builder.nodes.values())

    def get(self, node_id: str):
        return self._builder.lookup_node(str(node_id))

    def prompt(self) -> dict:
        return self._builder.finalize()


def node(class_type: str, **inputs) -> dict:
    """One API-format node (to put under an id of an existing prompt)."""
    return _graph_utils().Node(None, class_type, inputs).serialize()


def is_link(value) -> bool:
    return _graph_utils().is_link(value)
