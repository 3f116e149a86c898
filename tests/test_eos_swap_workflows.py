"""Tier 2: the shipped end-of-turn swap workflow of Qwen-Image on ComfyUI's own Qwen-Image text encoder.

ComfyUI's Qwen2.5-VL class builds a 152064 x 3584 token table and a vision tower, so the tiny
Qwen-Image that test_workflows.py samples this workflow with uses a stand-in text encoder
(devtools/families.py). Here the encoder is ComfyUI's own class instead, at width 64 without its vision
tower (tests/text_encoders.py): the whole graph passes ComfyUI's own prompt validation with the real
node definitions (the model files it names present as empty placeholders: validation reads names only),
and its text nodes (core CLIP Text Encode of A and B, the swap node with the shipped inputs) run in the
executor, rows checked against core CLIP Text Encode.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

import text_encoders
from devtools import paths
from devtools.workflows.convert import ui_to_api
from devtools.workflows.specs import families as family_specs

pytestmark = pytest.mark.comfy
WORKFLOW = paths.WORKFLOWS / "qwen_image_eos_swap_end_of_turn.json"
FILES = {"diffusion_models": family_specs.QWEN_IMAGE_UNET, "text_encoders": family_specs.QWEN_IMAGE_TEXT_ENCODER,
         "vae": family_specs.QWEN_IMAGE_VAE}


@pytest.fixture(scope="module")
def shipped(comfy):
    return ui_to_api(json.loads(WORKFLOW.read_text()), comfy.object_info())


@pytest.fixture
def placeholder_files(comfy, tmp_path):
    """The workflow's model files as empty files in folders ComfyUI lists, removed afterwards."""
    import folder_paths

    added = []
    for folder, name in FILES.items():
        d = tmp_path / folder
        d.mkdir()
        (d / name).write_bytes(b"")
        folder_paths.add_model_folder_path(folder, str(d))
        added.append((folder, str(d)))
    yield
    for folder, d in added:
        folder_paths.folder_names_and_paths[folder][0].remove(d)
        folder_paths.filename_list_cache.pop(folder, None)  # the cache keeps a removed folder's files listed


def _validate(prompt):
    import execution

    return asyncio.run(execution.validate_prompt("qwen-image-check", prompt, None))


def test_qwen_image_workflow_passes_comfyui_validation(shipped, placeholder_files):
    valid, error, outputs, node_errors = _validate(shipped)
    assert valid, (error, node_errors)
    (save,) = [n for n in shipped.values() if n["class_type"] == "SaveImage"]
    assert outputs and node_errors == {}
    loader = next(n for n in shipped.values() if n["class_type"] == "CLIPLoader")
    assert loader["inputs"]["type"] == "qwen_image" and save["inputs"]["filename_prefix"].startswith("shapefirst/")


def test_validation_really_checks_the_files(shipped):
    """Without the placeholders the same graph is refused: the check above is not vacuous."""
    valid, _, _, node_errors = _validate(shipped)
    assert not valid
    refused = {n["class_type"] for n in node_errors.values()}
    assert {"UNETLoader", "CLIPLoader", "VAELoader"} <= refused


def _hf_ids(sub, text):
    return list(sub.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_qwen_image_workflow_text_nodes_swap_the_end_of_turn_rows(comfy, shipped):
    """The shipped text nodes on the reduced-width Qwen-Image encoder: the swap's rows are A's, with the
    rows of the template's closing tokens taken from B (expected by plain indexing of core outputs)."""
    clip = text_encoders.qwen_image()
    text_encoders.register_held_clips(qwen_image=clip)
    try:
        loader = next(k for k, n in shipped.items() if n["class_type"] == "CLIPLoader")
        keep = {k: n for k, n in shipped.items() if n["class_type"] in ("CLIPTextEncode", "EOSSwapConditioning")}
        graph = {loader: {"class_type": text_encoders.HeldCLIP.NODE_ID, "inputs": {"name": "qwen_image"}}, **keep}
        swap_id = next(k for k, n in keep.items() if n["class_type"] == "EOSSwapConditioning")
        swap = keep[swap_id]["inputs"]
        by_text = {n["inputs"]["text"]: k for k, n in keep.items() if n["class_type"] == "CLIPTextEncode"}
        with torch.inference_mode():
            r = comfy.run(graph, outputs=[by_text[swap["prompt_a"]], by_text[swap["prompt_b"]], swap_id])
    finally:
        text_encoders.unregister_held_clips()
    a, _ = r.output_value(by_text[swap["prompt_a"]], 0)[0]
    b, _ = r.output_value(by_text[swap["prompt_b"]], 0)[0]
    cond, extras = r.output_value(swap_id, 0)[0]
    tok = clip.tokenizer
    sub = getattr(tok, tok.clip)
    closing = len(_hf_ids(sub, tok.llama_template.split("{}")[1]))
    assert closing == 5  # <|im_end|> \n <|im_start|> assistant \n
    n_a = len(_hf_ids(sub, swap["prompt_a"]))
    assert a.shape == cond.shape == (1, n_a + closing, 64)  # ComfyUI cut the template's prefix
    expected = a.clone()
    expected[0, -closing:] = b[0, -closing:]
    assert torch.equal(cond, expected)
    assert not torch.equal(a[0, -closing:], b[0, -closing:])  # the end-of-turn rows see the prompt
    assert "<|im_end|>" in r.output_value(swap_id, 1)
