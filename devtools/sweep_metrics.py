"""Quality metrics of a sweep's images and the summary files (Table 2, chart, CSV).

* L1 to the a = 0 image of the same prompt: always (pixels in [0, 1]).
* Image-CLIPScore (cosine of the image embeddings with the a = 0 image): only with a CLIP
  vision model ComfyUI can load. Embeddings come from ComfyUI's own CLIPVisionLoader and
  CLIPVisionEncode nodes, run as a graph by the in-process executor (devtools/harness.py): core
  ComfyUI has no output node that returns an embedding over HTTP.
* Text-CLIPScore (100 x cosine of image and prompt, as the paper reports it): only with a local
  transformers CLIP folder that has both towers (--clip-hf); opened with local_files_only.
* FID of each window's images against a reference folder: only with torchmetrics installed
  and the Inception weights file given (--fid-weights).
Nothing downloads weights; a metric whose model is missing is left out, with a log line.
"""

from __future__ import annotations

import csv
import json
import logging
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from shapefirst import sweep as pure

LOG = logging.getLogger("shapefirst.sweep")


def load_image(path) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


class NodeClipVision:
    """Image embeddings of a loaded CLIP_VISION object through core CLIPVisionEncode."""

    def __init__(self, clip_vision):
        self.clip_vision = clip_vision

    def embed(self, image: np.ndarray) -> np.ndarray:
        import nodes
        import torch

        with torch.inference_mode():  # as ComfyUI's executor runs every node
            (out,) = nodes.CLIPVisionEncode().encode(self.clip_vision, torch.from_numpy(image)[None], "center")
        return out["image_embeds"][0].float().cpu().numpy()


class GraphClipVision:
    """Image embeddings from a graph CLIPVisionLoader -> LoadImage -> CLIPVisionEncode run by the
    in-process harness; ``clip_name`` is a file in ComfyUI's models/clip_vision (or a path)."""

    def __init__(self, harness, clip_name: str):
        import folder_paths

        path = Path(clip_name)
        if path.is_file():
            folder_paths.add_model_folder_path("clip_vision", str(path.parent.resolve()))
            clip_name = path.name
        if clip_name not in folder_paths.get_filename_list("clip_vision"):
            raise FileNotFoundError(f"CLIP vision model {clip_name!r} not found; pass --clip-vision with the path "
                                    "of a CLIP vision .safetensors file (e.g. CLIP ViT-L/14's vision tower)")
        self.harness, self.clip_name, self.first = harness, clip_name, True

    def embed(self, image: np.ndarray) -> np.ndarray:
        import folder_paths

        name = f"shapefirst_sweep_{uuid.uuid4().hex}.png"
        path = Path(folder_paths.get_input_directory()) / name
        Image.fromarray((image * 255).round().astype(np.uint8)).save(path)
        try:
            graph = {"1": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": self.clip_name}},
                     "2": {"class_type": "LoadImage", "inputs": {"image": name}},
                     "3": {"class_type": "CLIPVisionEncode",
                           "inputs": {"clip_vision": ["1", 0], "image": ["2", 0], "crop": "center"}}}
            result = self.harness.run(graph, fresh_cache=self.first, outputs=["3"])  # keep the loader cached
            self.first = False
            return result.output_value("3")["image_embeds"][0].float().cpu().numpy()
        finally:
            path.unlink(missing_ok=True)


def _projected(features):
    """The projected CLIP embeddings from ``get_image_features`` / ``get_text_features``: a tensor in
    transformers 4, a model output whose ``pooler_output`` holds them in transformers 5."""
    return getattr(features, "pooler_output", features)


class HFTextClip:
    """Text-CLIPScore with a local transformers CLIP folder (text and vision towers that match)."""

    def __init__(self, folder):
        from transformers import CLIPModel, CLIPProcessor

        if not (Path(folder) / "config.json").is_file():
            raise FileNotFoundError(f"--clip-hf {folder}: no config.json there; give a local transformers CLIP "
                                    "folder (both towers, tokenizer and preprocessor files); nothing is downloaded")
        try:
            self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
            self.proc = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        except OSError as exc:
            raise FileNotFoundError(f"--clip-hf {folder}: not a complete local CLIP folder ({exc}); it needs "
                                    "config.json, the weights, the tokenizer and preprocessor files") from None

    def score(self, image: np.ndarray, text: str) -> float:
        import torch

        with torch.no_grad():
            inputs = self.proc(text=[text], images=[(image * 255).round().astype(np.uint8)], return_tensors="pt",
                               padding=True, truncation=True)
            img = _projected(self.model.get_image_features(pixel_values=inputs["pixel_values"]))
            txt = _projected(self.model.get_text_features(input_ids=inputs["input_ids"],
                                                          attention_mask=inputs["attention_mask"]))
        return 100.0 * max(pure.cosine(img[0].numpy(), txt[0].numpy()), 0.0)


def fid_per_window(rows: list[dict], out_dir: Path, weights, reference_dir) -> dict:
    """FID of each window's images against ``reference_dir`` (default: the a = 0 images)."""
    try:
        import torch
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError:
        LOG.warning("sweep: FID left out: install torchmetrics (pip install torchmetrics) to compute it")
        return {}
    if reference_dir:
        refs = [load_image(p) for p in sorted(Path(reference_dir).iterdir()) if p.suffix.lower() in (".png", ".jpg")]
    else:
        refs = [load_image(out_dir / r["image"]) for r in rows if r["window"] == pure.REFERENCE]

    def batch(images):
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)

    out = {}
    for label in dict.fromkeys(r["window"] for r in rows):
        fid = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(weights))
        fid.update(batch(refs), real=True)
        fid.update(batch([load_image(out_dir / r["image"]) for r in rows if r["window"] == label]), real=False)
        out[label] = float(fid.compute())
    return out


def score(records: dict[str, dict], out_dir: Path, image_clip=None, text_clip=None) -> list[dict]:
    """Per-image rows with L1 (and the CLIP scores when a model is given) against the a = 0 image."""
    rows = sorted(records.values(), key=lambda r: (r["prompt_index"], r["window"] != pure.REFERENCE, r["key"]))
    ref = {r["prompt_index"]: r for r in rows if r["window"] == pure.REFERENCE}
    ref_img, ref_emb = {}, {}
    out = []
    for r in rows:
        r = dict(r)
        img = load_image(out_dir / r["image"])
        base = ref.get(r["prompt_index"])
        if base is not None:
            if r["prompt_index"] not in ref_img:
                ref_img[r["prompt_index"]] = load_image(out_dir / base["image"])
            r["l1"] = pure.l1(img, ref_img[r["prompt_index"]])
            if image_clip is not None:
                if r["prompt_index"] not in ref_emb:
                    ref_emb[r["prompt_index"]] = image_clip.embed(ref_img[r["prompt_index"]])
                r["image_clip"] = pure.cosine(image_clip.embed(img), ref_emb[r["prompt_index"]])
        if text_clip is not None:
            r["text_clip"] = text_clip.score(img, r["prompt"])
        out.append(r)
    return out


def write_summary(rows: list[dict], windows, out_dir: Path, fid: dict | None = None) -> list[dict]:
    """per_image.jsonl/.csv, summary.csv, summary.md and summary.png in ``out_dir``."""
    out_dir = Path(out_dir)
    with open(out_dir / "per_image.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out_dir / "per_image.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    table = pure.aggregate(rows, windows, fid)
    (out_dir / "summary.csv").write_text(pure.table_csv(table), encoding="utf-8")
    md = ["# Truncated guidance sweep", "", pure.table_markdown(table)]
    try:
        pure.render_tradeoff(table).save(out_dir / "summary.png")
        md += ["![saved latency against quality](summary.png)", ""]
    except ValueError as exc:
        LOG.warning("sweep: no chart (%s)", exc)
    (out_dir / "summary.md").write_text("\n".join(md), encoding="utf-8")
    return table
