"""ComfyUI workflow files: convert the UI format (what people load and share) into the API format
(what the executor runs), and shrink a prompt for a quick run.

The conversion follows the front end's ``app.graphToPrompt()``: widget values are matched to
widget inputs in the node definition's order, a ``control_after_generate`` value follows each
input that declares one, links become ``[origin_id, origin_slot]``, and every node gets
``_meta.title``. The browser test checks this against the real front end.

Workflow JSON is data from strangers: it is parsed with ``json`` only and validated here.
"""

from __future__ import annotations

import json

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}
MUTED, BYPASSED = 2, 4


class WorkflowError(ValueError):
    pass


def inputs_in_order(info: dict) -> list[tuple[str, object, dict]]:
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


def is_widget(itype, opts: dict) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(itype, list) or itype in WIDGET_TYPES


def widget_names(info: dict) -> list[tuple[str, bool]]:
    """Widget input names in order, each with whether a control_after_generate value follows."""
    return [(n, bool(o.get("control_after_generate"))) for n, t, o in inputs_in_order(info) if is_widget(t, o)]


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
