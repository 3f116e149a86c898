"""Shipped workflows: what the generator writes, converted as the front end does, run in ComfyUI."""

from __future__ import annotations

import json
from itertools import combinations

import pytest

from devtools import families, paths
from devtools.server import ComfyServer, prepare_base
from devtools.workflows import convert as workflow_tools
from devtools.workflows import generate
from devtools.workflows.convert import WorkflowError, ui_to_api
from devtools.workflows.family_models import (FAMILY_TE_NODE, FULL_WIDTH_STEPS, VIDEO_FRAMES, family_of,
                                              with_family_models)

SHIPPED = sorted(paths.WORKFLOWS.glob("*.json"))
# Folders ComfyUI 0.3.75 lists a pack's workflows from; it lists every one it finds, so exactly one may exist.
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")


def test_every_workflow_has_a_builder_and_every_builder_a_file():
    assert [p.name for p in SHIPPED] == sorted(generate.WORKFLOW_BUILDERS)
    assert [d for d in TEMPLATE_FOLDERS if (paths.REPO / d).exists()] == [paths.WORKFLOWS.name]


@pytest.mark.comfy
def test_shipped_files_are_what_the_generator_writes(comfy):
    built = generate.build_all(comfy.object_info())
    for path in SHIPPED:
        assert path.read_text() == built[path.name], f"{path.name} is stale: run scripts/make_workflows.py"


@pytest.mark.comfy
def test_every_saving_node_has_its_own_filename_prefix(comfy):
    """ComfyUI numbers files per prefix: a chart and the data beside it, or two workflows, sharing one
    would number each other's files (fig16_kl_00002_.png beside fig16_kl_00001_.csv)."""
    info = comfy.object_info()
    prefixes = [(path.stem, nid, node["inputs"]["filename_prefix"]) for path in SHIPPED
                for nid, node in ui_to_api(json.loads(path.read_text()), info).items()
                if "filename_prefix" in node["inputs"]]
    assert len(prefixes) > len(SHIPPED)
    seen = {}
    for stem, nid, prefix in prefixes:
        assert prefix not in seen, f"{stem} node {nid} and {seen[prefix]} share the filename prefix {prefix}"
        seen[prefix] = f"{stem} node {nid}"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_nodes_do_not_overlap(path):
    """No node's box (title bar included) covers another's, in its column or the next, whatever its
    width (the browser tests measure the boxes again after a run, when the views have opened)."""
    title_bar = 30
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - title_bar, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in json.loads(path.read_text())["nodes"]]
    for (a, ax0, ay0, ax1, ay1), (b, bx0, by0, bx1, by1) in combinations(boxes, 2):
        assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"nodes {a} and {b} overlap"


@pytest.mark.comfy
def test_real_server_lists_every_shipped_workflow_once(runtime_paths, comfy, tmp_path):
    """GET /workflow_templates of a real ComfyUI server (main.py) lists each shipped file once, and the
    server hands out a workflow and its thumbnail where the template browser asks (<name>.jpg)."""
    import urllib.request

    thumb = SHIPPED[0].with_suffix(".jpg")
    with ComfyServer(runtime_paths["python"], runtime_paths["comfyui"], prepare_base(tmp_path, [])) as srv:
        listed = srv.get_json("/workflow_templates").get(paths.PACK_DIR_NAME)
        served = srv.get_json(f"/api/workflow_templates/{paths.PACK_DIR_NAME}/{SHIPPED[0].name}")
        with urllib.request.urlopen(f"{srv.url}/api/workflow_templates/{paths.PACK_DIR_NAME}/{thumb.name}") as r:
            picture = r.read()
    assert sorted(listed or []) == [p.stem for p in SHIPPED]
    assert served == json.loads(SHIPPED[0].read_text())
    assert picture == thumb.read_bytes()


SAVE_NODES = ("SaveImage", "SaveAnimatedWEBP")


@pytest.mark.comfy
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_workflow_runs_in_comfyui(comfy, sd15_ckpt, path, request):
    workflow = json.loads(path.read_text())
    assert "/" not in json.dumps([n.get("widgets_values") for n in workflow["nodes"]
                                  if n["type"] in ("CheckpointLoaderSimple", "UNETLoader", "VAELoader", "CLIPLoader",
                                                   "TripleCLIPLoader")])  # no absolute model paths
    info = comfy.object_info()
    shipped = ui_to_api(workflow, info)
    family = family_of(shipped)
    prompt = shipped
    if family is not None:
        fixture = "full_width_models" if family in families.FULL_WIDTH else "family_models"
        prompt = with_family_models(shipped, family, request.getfixturevalue(fixture))
    prompt = workflow_tools.apply_overrides(prompt, ckpt=sd15_ckpt, size=64, max_steps=6)
    r = comfy.run(prompt)
    ours = [nid for nid, n in shipped.items()
            if info[n["class_type"]]["python_module"].endswith("comfyui-shapefirst")]
    assert ours, "a shipped workflow must use the pack's nodes"
    for nid in ours:
        assert r.output(nid) is not None  # every pack node ran
    for nid, node in shipped.items():
        if info[node["class_type"]].get("output_node"):
            assert nid in r.ui, f"output node {nid} ({node['class_type']}) showed nothing"
    saved = [nid for nid, n in shipped.items() if n["class_type"] in SAVE_NODES]
    assert saved and all(r.ui[nid]["images"] for nid in saved)


def test_family_substitution_keeps_the_shipped_prompt_and_rewires_the_checkpoint():
    shipped = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd3.5_large.safetensors"}},
               "2": {"class_type": "TripleCLIPLoader", "inputs": {"clip_name1": "a", "clip_name2": "b",
                                                                  "clip_name3": "c"}},
               "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["2", 0]}},
               "4": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
               "5": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 3.0}}}
    before = json.dumps(shipped)
    assert family_of(shipped) == "sd3"
    out = with_family_models(shipped, "sd3", {"sd3": "tiny-sd3", "vae:taesd3": "tiny-vae"})
    assert json.dumps(shipped) == before  # the shipped prompt is untouched
    assert out["1"]["class_type"] == "UNETLoader" and out["1"]["inputs"]["unet_name"] == "tiny-sd3"
    assert out["2"]["class_type"] == FAMILY_TE_NODE and out["2"]["inputs"] == {"kind": "sd3"}
    assert out["4"]["inputs"]["vae"] == ["6", 0] and out["6"]["inputs"] == {"vae_name": "tiny-vae"}
    assert out["5"]["inputs"]["model"] == ["1", 0]
    wan = {"1": {"class_type": "CLIPLoader", "inputs": {"clip_name": "u", "type": "wan", "device": "default"}},
           "2": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 832, "height": 480, "length": 33,
                                                                     "batch_size": 1}}}
    assert family_of(wan) == "wan21_t2v"
    assert with_family_models(wan, "wan21_t2v", {})["2"]["inputs"]["length"] == VIDEO_FRAMES
    qwen = {"1": {"class_type": "CLIPLoader", "inputs": {"clip_name": "q", "type": "qwen_image", "device": "default"}},
            "2": {"class_type": "VAELoader", "inputs": {"vae_name": "qwen_image_vae.safetensors"}}}
    assert family_of(qwen) == "qwen_image"
    out = with_family_models(qwen, "qwen_image", {"qwen_image": "tiny-qwen", "vae:wan21": "tiny-wan-vae"})
    assert out["1"]["class_type"] == FAMILY_TE_NODE and out["1"]["inputs"] == {"kind": "qwen_image"}
    assert out["2"]["inputs"] == {"vae_name": "tiny-wan-vae"}  # Qwen-Image decodes with the Wan 2.1 VAE
    flux = {"1": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "l", "clip_name2": "t", "type": "flux",
                                                             "device": "default"}},
            "2": {"class_type": "KSampler", "inputs": {"steps": 20}}}
    assert family_of(flux) == "flux"
    lumina = {"1": {"class_type": "CLIPLoader", "inputs": {"clip_name": "g", "type": "lumina2", "device": "default"}}}
    assert family_of(lumina) == "lumina2"  # every tiny family's text encoder is found
    with pytest.raises(ValueError, match="no tiny model family uses a 'hidream' text encoder"):
        family_of({"1": {"class_type": "CLIPLoader", "inputs": {"clip_name": "h", "type": "hidream"}}})
    assert with_family_models(flux, "flux", {})["2"]["inputs"]["steps"] == FULL_WIDTH_STEPS


def _info(comfy_free=None):
    """A minimal object_info for converter unit tests (no ComfyUI needed)."""
    return {
        "KSampler": {"input": {"required": {
            "model": ["MODEL", {}], "seed": ["INT", {"default": 0, "control_after_generate": True}],
            "steps": ["INT", {"default": 20}], "sampler_name": [["euler", "ddim"], {}]}},
            "input_order": {"required": ["model", "seed", "steps", "sampler_name"]},
            "output": ["LATENT"], "output_name": ["LATENT"], "display_name": "KSampler"},
        "Loader": {"input": {"required": {"name": [["a.safetensors"], {}]}}, "input_order": {"required": ["name"]},
                   "output": ["MODEL"], "output_name": ["MODEL"], "display_name": "Load"},
    }


def _wf(values, mode=0, extra_nodes=()):
    return {"nodes": [
        {"id": 1, "type": "Loader", "mode": 0, "inputs": [], "outputs": [], "widgets_values": ["a.safetensors"]},
        {"id": 2, "type": "KSampler", "mode": mode, "inputs": [{"name": "model", "type": "MODEL", "link": 5}],
         "widgets_values": values, "title": "My sampler"},
        *extra_nodes], "links": [[5, 1, 0, 2, 0, "MODEL"]]}


def test_converter_skips_control_after_generate_and_keeps_titles():
    api = ui_to_api(_wf([42, "randomize", 30, "ddim"]), _info())
    assert api["2"] == {"inputs": {"seed": 42, "steps": 30, "sampler_name": "ddim", "model": ["1", 0]},
                        "class_type": "KSampler", "_meta": {"title": "My sampler"}}
    assert api["1"]["_meta"]["title"] == "Load"


def test_converter_drops_notes_and_muted_nodes_and_refuses_what_it_cannot_do():
    note = {"id": 3, "type": "Note", "mode": 0, "inputs": [], "widgets_values": ["hello"]}
    assert set(ui_to_api(_wf([1, "fixed", 2, "euler"], extra_nodes=[note]), _info())) == {"1", "2"}
    assert set(ui_to_api(_wf([1, "fixed", 2, "euler"], mode=2), _info())) == {"1"}
    with pytest.raises(WorkflowError, match="bypassed"):
        ui_to_api(_wf([1, "fixed", 2, "euler"], mode=4), _info())
    with pytest.raises(WorkflowError, match="widget values"):
        ui_to_api(_wf([1, 2, "euler"]), _info())  # control value missing: would shift every widget
    with pytest.raises(WorkflowError, match="unknown type"):
        ui_to_api({"nodes": [{"id": 9, "type": "Nope", "widgets_values": []}], "links": []}, _info())
    with pytest.raises(WorkflowError, match="not a ComfyUI UI-format workflow"):
        ui_to_api({"1": {"class_type": "KSampler"}}, _info())


def test_overrides_copy_the_prompt():
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x"}},
              "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768, "batch_size": 1}},
              "3": {"class_type": "KSampler", "inputs": {"steps": 50}}}
    out = workflow_tools.apply_overrides(prompt, ckpt="tiny.safetensors", size=64, max_steps=6)
    assert out["1"]["inputs"]["ckpt_name"] == "tiny.safetensors"
    assert out["2"]["inputs"]["width"] == out["2"]["inputs"]["height"] == 64
    assert out["3"]["inputs"]["steps"] == 6
    assert prompt["3"]["inputs"]["steps"] == 50  # the original is untouched


@pytest.mark.comfy
def test_builder_refuses_overlapping_nodes(comfy):
    from devtools.workflows.builder import WorkflowBuilder  # its graph is ComfyUI's GraphBuilder

    b = WorkflowBuilder(_info())
    b.add("Loader", None, 0, 0, size=(320, 260))
    b.add("Loader", None, 0, 1, size=(320, 260))
    assert len(b.to_ui()["nodes"]) == 2  # rows 300 apart: 260 + the title bar fits
    b.add("Loader", None, 0, 1.5, size=(320, 260))
    with pytest.raises(WorkflowError, match="overlap"):
        b.to_ui()
