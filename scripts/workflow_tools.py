"""ComfyUI workflow files: build the UI format from a short description, and convert the UI
format (what people load and share) into the API format (what the executor runs).

The conversion follows the front end's ``app.graphToPrompt()``: widget values are matched to
widget inputs in the node definition's order, a ``control_after_generate`` value follows each
input that declares one, links become ``[origin_id, origin_slot]``, and every node gets
``_meta.title``. The browser test checks this against the real front end.

Workflow JSON is data from strangers: it is parsed with ``json`` only and validated here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}
MUTED, BYPASSED = 2, 4


class WorkflowError(ValueError):
    pass


def _inputs_in_order(info: dict) -> list[tuple[str, object, dict]]:
    """(name, type, options) for each input in the order the front end creates them."""
    out = []
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    for section in ("required", "optional"):
        specs = info["input"].get(section, {})
        for name in order.get(section, []):
            spec = specs[name]
            itype = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, itype, opts))
    return out


def _is_widget(itype, opts: dict) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(itype, list) or itype in WIDGET_TYPES


def widget_names(info: dict) -> list[tuple[str, bool]]:
    """Widget input names in order, each with whether a control_after_generate value follows."""
    return [(n, bool(o.get("control_after_generate"))) for n, t, o in _inputs_in_order(info) if _is_widget(t, o)]


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow to the API prompt the front end would queue."""
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        raise WorkflowError("not a ComfyUI UI-format workflow (no 'nodes' list)")
    if workflow.get("definitions", {}).get("subgraphs"):
        raise WorkflowError("subgraphs are not supported by the headless converter")
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"])
        else:
            links[link[0]] = (link[1], link[2])
    prompt = {}
    for node in workflow["nodes"]:
        ntype = node.get("type")
        if ntype in FRONTEND_ONLY or node.get("mode") == MUTED:
            continue
        if node.get("mode") == BYPASSED:
            raise WorkflowError(f"node {node.get('id')} ({ntype}) is bypassed; the headless converter does not rewire bypassed nodes")
        if ntype not in object_info:
            raise WorkflowError(f"node {node.get('id')} has unknown type {ntype!r}; is its custom node pack installed?")
        info = object_info[ntype]
        inputs: dict = {}
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):
            raise WorkflowError(f"node {node['id']} ({ntype}) stores widgets as a dict; not supported")
        k = 0
        for name, has_control in widget_names(info):
            if k >= len(values):
                raise WorkflowError(f"node {node['id']} ({ntype}) has too few widget values for '{name}'")
            inputs[name] = values[k]
            k += 2 if has_control else 1
        if k != len(values):
            raise WorkflowError(f"node {node['id']} ({ntype}) has {len(values)} widget values, expected {k}")
        for slot in node.get("inputs", []):
            link_id = slot.get("link")
            if link_id is None:
                continue
            if link_id not in links:
                raise WorkflowError(f"node {node['id']} input {slot.get('name')} refers to missing link {link_id}")
            origin, origin_slot = links[link_id]
            inputs[slot["name"]] = [str(origin), int(origin_slot)]
        prompt[str(node["id"])] = {
            "inputs": inputs,
            "class_type": ntype,
            "_meta": {"title": node.get("title") or info.get("display_name") or ntype},
        }
    return prompt


# ---------------------------------------------------------------------------------------
# Building UI-format workflows from a short description (used by scripts/make_workflows.py)


@dataclass
class Ref:
    node: "NodeSpec"
    slot: int = 0


@dataclass
class NodeSpec:
    id: int
    type: str
    inputs: dict
    title: str | None = None
    column: int = 0
    row: int = 0
    size: tuple[int, int] = (320, 260)

    def out(self, slot: int = 0) -> Ref:
        return Ref(self, slot)


@dataclass
class WorkflowBuilder:
    object_info: dict
    nodes: list[NodeSpec] = field(default_factory=list)
    notes: list[tuple[str, int, int]] = field(default_factory=list)

    def add(self, type_: str, title: str | None = None, column: int = 0, row: float = 0,
            size: tuple[int, int] = (320, 260), **inputs) -> NodeSpec:
        """Add a node at grid cell (column, row); ``inputs`` are widget values or ``node.out(slot)``."""
        if type_ not in self.object_info:
            raise WorkflowError(f"unknown node type {type_}")
        spec = NodeSpec(len(self.nodes) + 1, type_, inputs, title, column, row, size)
        self.nodes.append(spec)
        return spec

    def note(self, text: str, column: int = 0, row: int = 0) -> None:
        self.notes.append((text, column, row))

    def to_ui(self) -> dict:
        ui_nodes, ui_links = [], []
        outgoing: dict[tuple[int, int], list[int]] = {}
        link_id = 0
        for n in self.nodes:
            info = self.object_info[n.type]
            spec_inputs = _inputs_in_order(info)
            known = {name for name, _, _ in spec_inputs}
            unknown = set(n.inputs) - known
            if unknown:
                raise WorkflowError(f"{n.type} has no inputs {sorted(unknown)}")
            slots, widgets = [], []
            for name, itype, opts in spec_inputs:
                val = n.inputs.get(name)
                is_widget = _is_widget(itype, opts)
                if isinstance(val, Ref):
                    link_id += 1
                    origin = val.node
                    otype = self.object_info[origin.type]["output"][val.slot]
                    ui_links.append([link_id, origin.id, val.slot, n.id, len(slots), otype])
                    outgoing.setdefault((origin.id, val.slot), []).append(link_id)
                    slot = {"name": name, "type": "COMBO" if isinstance(itype, list) else itype, "link": link_id}
                    if is_widget:
                        slot["widget"] = {"name": name}
                    slots.append(slot)
                    if is_widget:
                        widgets.append(opts.get("default"))
                        if opts.get("control_after_generate"):
                            widgets.append("fixed")
                    continue
                if is_widget:
                    if val is None:
                        val = opts.get("default", itype[0] if isinstance(itype, list) and itype else None)
                    widgets.append(val)
                    if opts.get("control_after_generate"):
                        widgets.append("fixed")
                elif val is None and name in info["input"].get("required", {}):
                    raise WorkflowError(f"{n.type}: required input {name} is not connected")
                elif not is_widget:
                    slots.append({"name": name, "type": itype, "link": None})
            ui_nodes.append({
                "id": n.id, "type": n.type,
                "pos": [40 + 360 * n.column, int(60 + 300 * n.row)], "size": list(n.size),
                "flags": {}, "order": 0, "mode": 0,
                "inputs": slots,
                "outputs": [
                    {"name": oname, "type": otype, "links": [], "slot_index": i}
                    for i, (otype, oname) in enumerate(zip(info["output"], info["output_name"]))
                ],
                "properties": {"Node name for S&R": n.type},
                "widgets_values": widgets,
                **({"title": n.title} if n.title else {}),
            })
        for ui_node in ui_nodes:
            for out in ui_node["outputs"]:
                out["links"] = outgoing.get((ui_node["id"], out["slot_index"]), [])
        for k, (text, column, row) in enumerate(self.notes):
            ui_nodes.append({
                "id": len(self.nodes) + k + 1, "type": "Note", "pos": [40 + 360 * column, 60 + 300 * row],
                "size": [320, 160], "flags": {}, "order": 0, "mode": 0, "inputs": [], "outputs": [],
                "properties": {}, "widgets_values": [text],
            })
        for order, ui_node in enumerate(sorted(ui_nodes, key=lambda d: (d["pos"][0], d["pos"][1]))):
            ui_node["order"] = order
        return {
            "last_node_id": max(d["id"] for d in ui_nodes),
            "last_link_id": link_id,
            "nodes": ui_nodes,
            "links": ui_links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.6, "offset": [80, 40]}},
            "version": 0.4,
        }


def apply_overrides(prompt: dict, ckpt: str | None = None, size: int | None = None,
                    max_steps: int | None = None) -> dict:
    """A copy of an API prompt with the checkpoint, image size and step count replaced.

    Used to run the shipped workflows quickly on a CPU with a small random-weight checkpoint:
    every CheckpointLoaderSimple gets ``ckpt``, every Empty*Latent* node ``size`` x ``size``,
    and every ``steps`` input is capped at ``max_steps``.
    """
    out = json.loads(json.dumps(prompt))
    for node in out.values():
        inputs = node["inputs"]
        if ckpt and node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = ckpt
        if size and node["class_type"].startswith("Empty") and "width" in inputs and "height" in inputs:
            inputs["width"] = inputs["height"] = size
        if max_steps and isinstance(inputs.get("steps"), int):
            inputs["steps"] = min(inputs["steps"], max_steps)
    return out
