"""Build a UI-format workflow (what people load and share) from a short description.

Nodes are added to a ``devtools.graph.Graph`` (ComfyUI's GraphBuilder), each placed at a grid cell
(column, row) with a size; ``to_ui`` lays the columns out by the widest node of each, so a wide node
never covers its right-hand neighbour, and refuses a layout where two nodes' boxes (title bar
included) overlap. A node whose view opens after a run (a chart, a table, an image preview) is given
the size it opens to, or is the last of its column, so it never grows over a neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..graph import Graph, is_link
from ..paths import PACK_DIR_NAME
from .convert import WorkflowError, inputs_in_order, is_widget

X0, Y0 = 40, 60  # position of grid cell (0, 0)
COLUMN_GAP = 40  # free space between a column's widest node and the next column
ROW_HEIGHT = 300
NODE_SIZE = (320, 260)
NOTE_SIZE = (320, 160)
TITLE_HEIGHT = 30  # the title bar drawn above a node's position


def overlapping(ui_nodes: list[dict]) -> list[tuple[int, int]]:
    """Ids of the node pairs whose boxes (title bar included) overlap."""
    boxes = [(d["id"], d["pos"][0], d["pos"][1] - TITLE_HEIGHT, d["pos"][0] + d["size"][0], d["pos"][1] + d["size"][1])
             for d in ui_nodes]
    return [(a[0], b[0]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
            if min(a[3], b[3]) > max(a[1], b[1]) and min(a[4], b[4]) > max(a[2], b[2])]


@dataclass(frozen=True)
class Placement:
    title: str | None
    column: int
    row: float
    size: tuple[int, int]


@dataclass
class WorkflowBuilder:
    object_info: dict
    graph: Graph = field(default_factory=Graph)
    placement: dict = field(default_factory=dict)  # node id -> Placement
    notes: list[tuple[str, int, float]] = field(default_factory=list)

    def add(self, type_: str, title: str | None = None, column: int = 0, row: float = 0,
            size: tuple[int, int] = NODE_SIZE, **inputs):
        """Add a node at grid cell (column, row); ``inputs`` are widget values or ``node.out(slot)``."""
        if type_ not in self.object_info:
            raise WorkflowError(f"unknown node type {type_}")
        node = self.graph.node(type_, **inputs)
        self.placement[node.id] = Placement(title, column, row, size)
        return node

    def title(self, node) -> str | None:
        return self.placement[node.id].title

    def note(self, text: str, column: int = 0, row: float = 0) -> None:
        self.notes.append((text, column, row))

    def _column_x(self) -> list[int]:
        """x of each column: the previous column's x + its widest node (at least a default node) + a gap."""
        cells = [(p.column, p.size[0]) for p in self.placement.values()] + [(c, NOTE_SIZE[0]) for _, c, _ in self.notes]
        widths = [NODE_SIZE[0]] * (max(c for c, _ in cells) + 1)
        for column, width in cells:
            widths[column] = max(widths[column], width)
        xs = [X0]
        for width in widths[:-1]:
            xs.append(xs[-1] + width + COLUMN_GAP)
        return xs

    def _ui_node(self, n, xs: list[int], outgoing: dict, ui_links: list) -> dict:
        info = self.object_info[n.class_type]
        place = self.placement[n.id]
        spec_inputs = inputs_in_order(info)
        unknown = set(n.inputs) - {name for name, _, _ in spec_inputs}
        if unknown:
            raise WorkflowError(f"{n.class_type} has no inputs {sorted(unknown)}")
        slots, widgets = [], []
        for name, itype, opts in spec_inputs:
            val = n.inputs.get(name)
            widget = is_widget(itype, opts)
            if is_link(val):
                link_id = len(ui_links) + 1
                origin, slot_index = self.graph.get(val[0]), val[1]
                otype = self.object_info[origin.class_type]["output"][slot_index]
                ui_links.append([link_id, int(origin.id), slot_index, int(n.id), len(slots), otype])
                outgoing.setdefault((int(origin.id), slot_index), []).append(link_id)
                slot = {"name": name, "type": "COMBO" if isinstance(itype, list) else itype, "link": link_id}
                if widget:
                    slot["widget"] = {"name": name}
                slots.append(slot)
                if widget:
                    widgets.append(opts.get("default"))
                    if opts.get("control_after_generate"):
                        widgets.append("fixed")
                continue
            if widget:
                if val is None:
                    val = opts.get("default", itype[0] if isinstance(itype, list) and itype else None)
                widgets.append(val)
                if opts.get("control_after_generate"):
                    widgets.append("fixed")
            elif val is None and name in info["input"].get("required", {}):
                raise WorkflowError(f"{n.class_type}: required input {name} is not connected")
            else:
                slots.append({"name": name, "type": itype, "link": None})
        return {
            "id": int(n.id), "type": n.class_type,
            "pos": [xs[place.column], int(Y0 + ROW_HEIGHT * place.row)], "size": list(place.size),
            "flags": {}, "order": 0, "mode": 0,
            "inputs": slots,
            "outputs": [
                {"name": oname, "type": otype, "links": [], "slot_index": i}
                for i, (otype, oname) in enumerate(zip(info["output"], info["output_name"]))
            ],
            "properties": {"Node name for S&R": n.class_type},
            "widgets_values": widgets,
            **({"title": place.title} if place.title else {}),
        }

    def to_ui(self) -> dict:
        xs = self._column_x()
        outgoing: dict[tuple[int, int], list[int]] = {}
        ui_links: list = []
        ui_nodes = [self._ui_node(n, xs, outgoing, ui_links) for n in self.graph.nodes]
        for ui_node in ui_nodes:
            for out in ui_node["outputs"]:
                out["links"] = outgoing.get((ui_node["id"], out["slot_index"]), [])
            info = self.object_info[ui_node["type"]]
            if (info.get("output_node") and not str(info.get("python_module", "")).endswith(PACK_DIR_NAME)
                    and not any(out["links"] for out in ui_node["outputs"])):
                # a core output node's unused outputs are left out: hosts differ there (SaveImage has no
                # output in ComfyUI 0.3.75 and an IMAGE pass-through in newer ones), so that the generated
                # files are the same on every host (the browser tier loads them on both)
                ui_node["outputs"] = []
        count = len(ui_nodes)
        for k, (text, column, row) in enumerate(self.notes):
            ui_nodes.append({
                "id": count + k + 1, "type": "Note", "pos": [xs[column], Y0 + ROW_HEIGHT * row],
                "size": list(NOTE_SIZE), "flags": {}, "order": 0, "mode": 0, "inputs": [], "outputs": [],
                "properties": {}, "widgets_values": [text],
            })
        clashes = overlapping(ui_nodes)
        if clashes:
            raise WorkflowError(f"nodes overlap (ids): {clashes}; move them to other rows or columns")
        for order, ui_node in enumerate(sorted(ui_nodes, key=lambda d: (d["pos"][0], d["pos"][1]))):
            ui_node["order"] = order
        return {
            "last_node_id": max(d["id"] for d in ui_nodes),
            "last_link_id": len(ui_links),
            "nodes": ui_nodes,
            "links": ui_links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.6, "offset": [80, 40]}},
            "version": 0.4,
        }
