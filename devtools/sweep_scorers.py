"""The scorers behind the sweep's metrics (devtools/sweep_metrics.py lists them). numpy, Pillow,
torch and ComfyUI are imported when a scorer is made or used, never at import time."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from shapefirst.sweep_table import cosine, l1


def load_image(path):
    """(H, W, 3) float32 in [0, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


@dataclass
class Item:
    """One image to score: its pixels, those of its a = 0 twin (None when it has none), its prompt,
    and the twin's file (a key for caching what is computed from the twin)."""
    image: object
    reference: object | None
    prompt: str
    reference_name: str | None = None


class L1Score:
    def score(self, item: Item) -> float | None:
        return None if item.reference is None else l1(item.image, item.reference)


class ImageClipScore:
    """Cosine of the image's embedding with its a = 0 twin's (the twin's embedded once)."""

    def __init__(self, embedder):
        self.embedder, self._refs = embedder, {}

    def score(self, item: Item) -> float | None:
        if item.reference is None:
            return None
        if item.reference_name not in self._refs:
            self._refs[item.reference_name] = self.embedder.embed(item.reference)
        return cosine(self.embedder.embed(item.image), self._refs[item.reference_name])


class TextClipScore:
    def __init__(self, model):
        self.model = model

    def score(self, item: Item) -> float:
        return self.model.score(item.image, item.prompt)


class NodeClipVision:
    """Image embeddings of a loaded CLIP_VISION object through core CLIPVisionEncode."""

    def __init__(self, clip_vision):
        self.clip_vision = clip_vision

    def embed(self, image):
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

    def embed(self, image):
        import folder_paths
        import numpy as np
        from PIL import Image

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

    def score(self, image, text: str) -> float:
        import numpy as np
        import torch

        with torch.no_grad():
            inputs = self.proc(text=[text], images=[(image * 255).round().astype(np.uint8)], return_tensors="pt",
                               padding=True, truncation=True)
            img = _projected(self.model.get_image_features(pixel_values=inputs["pixel_values"]))
            txt = _projected(self.model.get_text_features(input_ids=inputs["input_ids"],
                                                          attention_mask=inputs["attention_mask"]))
        return 100.0 * max(cosine(img[0].numpy(), txt[0].numpy()), 0.0)


class FidScore:
    """FID of each window's images against ``reference_dir`` (default: the a = 0 images)."""

    def __init__(self, weights, reference_dir=None):
        self.weights, self.reference_dir = Path(weights), reference_dir

    def score_windows(self, rows: list[dict], out_dir: Path) -> dict[str, float]:
        import numpy as np
        import torch
        from torchmetrics.image.fid import FrechetInceptionDistance

        from shapefirst.sweep import REFERENCE

        if self.reference_dir:
            refs = [load_image(p) for p in sorted(Path(self.reference_dir).iterdir())
                    if p.suffix.lower() in (".png", ".jpg")]
        else:
            refs = [load_image(out_dir / r["image"]) for r in rows if r["window"] == REFERENCE]

        def batch(images):
            return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)

        out = {}
        for label in dict.fromkeys(r["window"] for r in rows):
            fid = FrechetInceptionDistance(feature=2048, normalize=True,
                                           feature_extractor_weights_path=str(self.weights))
            fid.update(batch(refs), real=True)
            fid.update(batch([load_image(out_dir / r["image"]) for r in rows if r["window"] == label]), real=False)
            out[label] = float(fid.compute())
        return out


class ToyClip:
    """ShapeFirst World's Toy-CLIP (devtools/world/evaluate.py) from a parameter folder: ``embed`` for
    ImageClipScore (unit image features) and ``score`` for TextClipScore (cosine with the prompt)."""

    _made: dict = {}

    def __init__(self, folder):
        from .world import evaluate

        self.model = evaluate.toy_clip(Path(folder).resolve())

    @classmethod
    def shared(cls, folder) -> "ToyClip":
        key = str(Path(folder).resolve())
        if key not in cls._made:
            cls._made[key] = cls(folder)
        return cls._made[key]

    def _features(self, image):
        import torch

        from .world.evaluate import as_nchw

        with torch.no_grad():
            return self.model.image_features(as_nchw(torch.from_numpy(image)[None]))[0]

    def embed(self, image):
        return self._features(image).numpy()

    def score(self, image, prompt: str) -> float:
        import torch

        from .world.tokens import encode

        with torch.no_grad():
            return float((self._features(image) * self.model.text_features(encode([prompt]))[0]).sum())
