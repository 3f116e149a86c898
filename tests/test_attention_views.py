"""Tier 2: AttentionMapView and AttentionMapCompare inside a real ComfyUI, their files and refusals."""

from __future__ import annotations

import json
import os

import pytest
import torch

import graphs
from devtools.harness import GraphError

pytestmark = pytest.mark.comfy

PROMPT = "The square coaster was next to the circular mug."
CAPTURE = {"record_uncond": False, "step_stride": 1, "max_tokens": 77, "max_grid": 64, "keep_layers": False,
           "memory_limit_mb": 1024.0}
VIEW = {"branch": "cond", "tokens": "auto", "steps": "auto", "batch_index": 0, "cell_size": 48, "edge_size": 64,
        "canny_low": 0.1, "canny_high": 0.2, "edge_tolerance": 1, "filename_prefix": "tests/attention"}
OUR_NODES = ("AttentionMapCapture", "AttentionMapView", "AttentionMapCompare")


def _view_graph(ckpt, prompt=PROMPT, steps=4, width=64, height=64, view=None, **capture):
    g = graphs.base(ckpt, prompt, "", width, height)
    g["5"] = {"class_type": "AttentionMapCapture", "inputs": {"model": ["1", 0], **CAPTURE, **capture}}
    g["6"] = graphs.ksampler(("5", 0), ("4", 0), steps=steps)
    g["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}}
    g["8"] = {"class_type": "AttentionMapView", "inputs": {
        "capture": ["5", 1], "images": ["7", 0], "clip": ["1", 1], "prompt": prompt, **VIEW, **(view or {})}}
    return g


def test_view_outputs_heatmaps_curves_and_files(comfy, sd15_ckpt):
    import folder_paths
    import safetensors.torch

    g = _view_graph(sd15_ckpt, steps=4, view={"filename_prefix": "../../escape/..\\evil name<script>"})
    r = comfy.run(g)
    d = r.ui["8"]["shapefirst_attention"][0]
    # tokens of the Fig. 1 prompt: [SOS], 10 word tokens (with the full stop), [EOS], then padding
    roles = [t["role"] for t in d["tokens"]]
    assert len(roles) == 77 and roles[0] == "SOS" and roles[1:11] == ["SEM"] * 10 and roles[11] == "EOS"
    assert roles[12:] == ["PAD"] * 65
    assert [t["label"] for t in d["tokens"][1:4]] == ["the", "square", "coaster"]
    assert d["selected_tokens"] == list(range(12))  # auto: [SOS], the words, [EOS]
    assert d["steps"] == [0, 1, 2, 3] and d["grid_steps"] == [0, 1, 2, 3] and d["total_steps"] == 4
    for k in range(4):  # class shares cover every position: they add up to 1 per step
        assert sum(d["class_shares"][c][k] for c in ("SOS", "SEM", "EOS", "PAD")) == pytest.approx(1, abs=1e-4)
    f1 = d["edge_f1"]
    assert len(f1["mean"]) == 4 and all(0 <= v <= 1 for v in f1["mean"])
    assert set(f1["per_token"]) == {str(i) for i in range(12)} and f1["mean_over"] == list(range(1, 11))
    grid = r.output_value("8", 0)
    assert grid.shape == (1, 18 + 12 * (48 + 2), 120 + 4 * (48 + 2), 3)  # 12 tokens x 4 steps of 48 px cells
    assert r.output_value("8", 1).shape[-1] == 3
    assert json.loads(r.output_value("8", 2))["class_shares"] == d["class_shares"]
    # files: under the output folder, sanitised, readable
    out_root = os.path.realpath(folder_paths.get_output_directory())
    exts = sorted(f["filename"].rsplit(".", 1)[1] for f in d["files"])
    assert exts == ["csv", "json", "safetensors"]
    for f in d["files"]:
        path = os.path.realpath(os.path.join(out_root, f["subfolder"], f["filename"]))
        assert path.startswith(out_root + os.sep) and "<" not in path and ".." not in f["subfolder"]
    st = [f for f in d["files"] if f["filename"].endswith(".safetensors")][0]
    path = os.path.join(out_root, st["subfolder"], st["filename"])
    tensors = safetensors.torch.load_file(path)
    assert tensors["cond.maps"].shape == (4, 1, 77, 8, 8) and tensors["cond.maps"].dtype == torch.float16
    assert tensors["cond.steps"].tolist() == [0, 1, 2, 3]
    run = r.output_value("5", 1).run
    assert torch.equal(tensors["cond.maps"][2], run.maps[0][2])
    with safetensors.safe_open(path, "pt") as fh:
        meta = json.loads(fh.metadata()["shapefirst"])
    assert meta["roles"] == roles and meta["labels"][2] == "square"
    # the browser payload: a sprite of 12 tokens x 4 steps of 8x8 cells, and the image
    temp = folder_paths.get_temp_directory()
    from PIL import Image

    with Image.open(os.path.join(temp, d["sprite"]["filename"])) as im:
        assert im.size == (4 * 8, 12 * 8) and im.mode == "L"
    assert d["sprite"]["type"] == d["picture"]["type"] == "temp" and d["cell"] == [8, 8]


def test_view_selects_tokens_and_steps(comfy, sd15_ckpt):
    r = comfy.run(_view_graph(sd15_ckpt, steps=5, step_stride=2, view={"tokens": "0, 2-3, 40", "steps": "0, 4"}))
    d = r.ui["8"]["shapefirst_attention"][0]
    assert d["steps"] == [0, 2, 4] and d["selected_tokens"] == [0, 2, 3, 40] and d["grid_steps"] == [0, 4]
    assert d["edge_f1"]["mean_over"] == [2, 3]
    assert r.output_value("8", 0).shape[1:3] == (18 + 4 * 50, 120 + 2 * 50)


@pytest.mark.parametrize("view,capture,message", [
    ({"tokens": "0, 90"}, {}, r"AttentionMapView: token index 90 is beyond the prompt: it has 77 positions"),
    ({"tokens": "30"}, {"max_tokens": 20}, r"AttentionMapView: token index 30 was not kept.*Raise max_tokens"),
    ({"steps": "7"}, {}, r"AttentionMapView: step 7 was not recorded; recorded steps: 0, 1"),
    ({"branch": "uncond"}, {}, r"AttentionMapView: 'capture' recorded nothing for the uncond branch; turn record_uncond on"),
    ({"tokens": "two"}, {}, r"AttentionMapView: tokens: cannot read 'two'"),
    ({"batch_index": 3}, {}, r"AttentionMapView: batch_index 3 is outside the batch of 1 image: use an index in 0\."),
    ({"prompt": "a prompt, " * 30}, {}, r"AttentionMapView: the prompt has 154 token positions but 'capture' recorded 77"),
])
def test_view_refuses_bad_inputs_naming_the_fix(comfy, sd15_ckpt, view, capture, message):
    g = _view_graph(sd15_ckpt, steps=2, view=view, **capture)
    with pytest.raises(GraphError, match=message):
        comfy.run(g)


def test_view_refuses_canny_thresholds_in_the_wrong_order_before_running(comfy, sd15_ckpt):
    with pytest.raises(GraphError, match=r"AttentionMapView: canny_low \(0.5\) must not exceed canny_high \(0.2\)"):
        comfy.run(_view_graph(sd15_ckpt, steps=2, view={"canny_low": 0.5}))


def test_view_refuses_images_that_are_not_the_captured_run_decoded(comfy, sd15_ckpt):
    g = _view_graph(sd15_ckpt, steps=2)
    g["9"] = {"class_type": "ImageScale", "inputs": {"image": ["7", 0], "upscale_method": "nearest-exact",
                                                     "width": 96, "height": 64, "crop": "disabled"}}
    g["8"]["inputs"]["images"] = ["9", 0]
    with pytest.raises(GraphError, match=r"AttentionMapView: the IMAGE input is 96x64 px, which is not the captured "
                                         r"8x8 latent decoded"):
        comfy.run(g)
    g["9"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["7", 0], "amount": 2}}
    with pytest.raises(GraphError, match=r"AttentionMapView: the IMAGE input holds 2 images but the captured run "
                                         r"sampled 1"):
        comfy.run(g)


def test_view_of_a_capture_whose_model_was_not_sampled_is_refused(comfy, sd15_ckpt):
    g = _view_graph(sd15_ckpt, steps=2)
    g["6"]["inputs"]["model"] = ["1", 0]  # the sampler uses the plain model: nothing is captured
    with pytest.raises(GraphError, match=r"AttentionMapView: 'capture' holds no finished sampling run. Connect"):
        comfy.run(g)


def _compare_graph(ckpt, prompt_b, steps=3, max_tokens=77, same_capture=False):
    g = _view_graph(ckpt, steps=steps)
    del g["8"]
    g["9"] = {"class_type": "CLIPTextEncode", "inputs": {"text": prompt_b, "clip": ["1", 1]}}
    g["10"] = {"class_type": "AttentionMapCapture", "inputs": {"model": ["1", 0], **CAPTURE, "max_tokens": max_tokens}}
    g["11"] = graphs.ksampler(("10", 0), ("4", 0), steps=steps, positive=("9", 0))
    g["12"] = {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 2]}}
    g["13"] = {"class_type": "AttentionMapCompare", "inputs": {
        "capture_a": ["5", 1], "images_a": ["7", 0], "capture_b": ["5" if same_capture else "10", 1],
        "images_b": ["12", 0], "branch": "cond", "batch_index": 0, "filename_prefix": "tests/kl"}}
    return g


def test_kl_of_two_real_captures(comfy, sd15_ckpt):
    same = comfy.run(_compare_graph(sd15_ckpt, PROMPT)).ui["13"]["shapefirst_attention_kl"][0]
    assert same["steps"] == [0, 1, 2]
    assert same["kl_a_b"] == [0.0, 0.0, 0.0] and same["kl_b_a"] == [0.0, 0.0, 0.0]  # same prompt, same seed
    other = comfy.run(_compare_graph(sd15_ckpt, "A dog standing on a bench during the day."))
    d = other.ui["13"]["shapefirst_attention_kl"][0]
    assert all(v > 0 for v in d["kl_a_b"] + d["kl_b_a"])
    assert d["kl_a_b"] != d["kl_b_a"]  # KL is not symmetric
    assert sorted(f["filename"].rsplit(".", 1)[1] for f in d["files"]) == ["csv", "json"]
    assert other.output_value("13", 0).shape[-1] == 3


def test_compare_refuses_truncated_tokens_and_one_capture_twice(comfy, sd15_ckpt):
    with pytest.raises(GraphError, match=r"AttentionMapCompare: capture_b kept maps for 12 of 77 token positions; "
                                         r"KL needs every position"):
        comfy.run(_compare_graph(sd15_ckpt, "a dog", steps=2, max_tokens=12))
    with pytest.raises(GraphError, match=r"AttentionMapCompare: capture_a and capture_b are the same capture"):
        comfy.run(_compare_graph(sd15_ckpt, "a dog", steps=2, same_capture=True))


def test_nodes_are_registered_with_descriptions_and_tooltips(comfy):
    info = comfy.object_info()
    for name in OUR_NODES:
        node = info[name]
        assert node["python_module"] == "custom_nodes.comfyui-shapefirst"
        assert node["category"] == "ShapeFirst/attention"
        assert len(node["description"]) > 40
        for section in ("required", "optional"):
            for input_name, spec in node["input"].get(section, {}).items():
                assert (spec[1] if len(spec) > 1 else {}).get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert all(node["output_tooltips"]), name
