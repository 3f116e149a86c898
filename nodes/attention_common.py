"""Helpers shared by Attention Map View and Attention Map Compare: checking that a capture holds
the run that produced the connected images, token labels from CLIP, selections, temp previews."""

from __future__ import annotations

import os
import re
import secrets

import torch

from ..shapefirst.attention import BRANCH_NAMES, COND, UNCOND, AttentionRun
from ..shapefirst.tokens import EOS, SEM, SOS, TokenizerInfo, flat_roles, prompt_roles, token_labels
from ._common import ShapeFirstInputError
from .attention_capture import AttentionRecorder

BRANCHES = {"cond": COND, "uncond": UNCOND}


def check_run(node: str, capture, images, branch_name: str, batch_index: int = 0,
              what: str = "capture") -> tuple[AttentionRun, int]:
    """The finished run held by ``capture``, checked against the decoded ``images``."""
    if not isinstance(capture, AttentionRecorder):
        raise ShapeFirstInputError(node, f"'{what}' must come from an Attention Map Capture node.")
    run = capture.run
    if run is None or not run.complete:
        raise ShapeFirstInputError(
            node, f"'{what}' holds no finished sampling run. Connect Attention Map Capture's MODEL output to a "
                  "sampler and that sampler's decoded IMAGE to this node (one sampler per capture node).")
    branch = BRANCHES.get(branch_name)
    if branch is None:
        raise ShapeFirstInputError(node, f"branch must be 'cond' or 'uncond', not {branch_name!r}.")
    if not run.steps(branch):
        hint = ("turn record_uncond on in Attention Map Capture (and use cfg other than 1.0, where ComfyUI skips "
                "that branch)") if branch == UNCOND else "check that the sampler has a positive conditioning"
        raise ShapeFirstInputError(node, f"'{what}' recorded nothing for the {branch_name} branch; {hint}.")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] != 3:
        raise ShapeFirstInputError(node, "the IMAGE input must be a batch of RGB images (B, H, W, 3).")
    if images.shape[0] != run.batch:
        raise ShapeFirstInputError(
            node, f"the IMAGE input holds {images.shape[0]} images but the captured run sampled {run.batch}. Connect "
                  "the decoded output of the sampler that uses this capture's MODEL.")
    (lh, lw), (h, w) = run.latent_hw, images.shape[1:3]
    if h % lh or w % lw or h // lh != w // lw:
        raise ShapeFirstInputError(
            node, f"the IMAGE input is {w}x{h} px, which is not the captured {lw}x{lh} latent decoded. Connect the "
                  "decoded output of the sampler that uses this capture's MODEL.")
    if not 0 <= batch_index < run.batch:
        raise ShapeFirstInputError(node, f"batch_index {batch_index} is outside the batch of {run.batch} images.")
    return run, branch


def _find_tokenizer(clip, key: str):
    tok = clip.tokenizer
    for name in (f"clip_{key}", key, getattr(tok, "clip", None)):
        inner = getattr(tok, name, None) if name else None
        if inner is not None and hasattr(inner, "inv_vocab"):
            return inner
    for inner in vars(tok).values():
        if hasattr(inner, "inv_vocab") and hasattr(inner, "end_token"):
            return inner
    return None


def prompt_tokens(node: str, clip, prompt: str) -> tuple[list[str], list[str]]:
    """(labels, roles) for every position of ``prompt`` as ``clip`` tokenizes it."""
    if clip is None or not hasattr(clip, "tokenize"):
        raise ShapeFirstInputError(node, "'clip' must be the CLIP model that encoded the prompt (from the checkpoint loader).")
    tokens = clip.tokenize(str(prompt), return_word_ids=True)
    key = "l" if "l" in tokens else next(iter(tokens))
    chunks = tokens[key]
    inner = _find_tokenizer(clip, key)
    if inner is None:
        raise ShapeFirstInputError(node, "this CLIP's tokenizer is not supported for token labels.")
    start = inner.start_token if getattr(inner, "tokens_start", 1) else None
    pad = getattr(inner, "pad_token", None)
    info = TokenizerInfo(start=start, end=inner.end_token, pad=inner.end_token if pad is None else int(pad))
    roles = flat_roles(prompt_roles(chunks, info))
    return token_labels(chunks, inner.inv_vocab, roles), roles


def check_prompt_length(node: str, run: AttentionRun, branch: int, roles: list[str], what: str = "capture") -> None:
    captured = run.token_count.get(branch, 0)
    if captured != len(roles):
        raise ShapeFirstInputError(
            node, f"the prompt has {len(roles)} token positions but '{what}' recorded {captured} for the "
                  f"{BRANCH_NAMES[branch]} branch. Connect the CLIP and the exact prompt text of that branch's "
                  "conditioning (the negative prompt for 'uncond').")


_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*$")


def parse_numbers(node: str, name: str, text: str) -> list[int]:
    """'0, 2-5, 9' -> [0, 2, 3, 4, 5, 9]."""
    out: list[int] = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        m = _RANGE.match(part)
        if not m:
            raise ShapeFirstInputError(node, f"{name}: cannot read {part.strip()!r}; write 'auto' or numbers and "
                                             "ranges such as '0, 2-5, 9'.")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        out.extend(range(a, b + 1) if b >= a else range(a, b - 1, -1))
    if not out:
        raise ShapeFirstInputError(node, f"{name} is empty; write 'auto' or numbers such as '0, 2-5, 9'.")
    return list(dict.fromkeys(out))


def select_tokens(node: str, text: str, roles: list[str], kept: int) -> list[int]:
    """'auto' = [SOS], every semantic token and the first [EOS]; else positions, checked."""
    if str(text).strip().lower() in ("", "auto"):
        eos = [i for i, r in enumerate(roles) if r == EOS][:1]
        picked = [i for i, r in enumerate(roles) if r in (SOS, SEM)] + eos
        return [i for i in picked if i < kept] or [0]
    picked = parse_numbers(node, "tokens", text)
    for i in picked:
        if i >= len(roles):
            raise ShapeFirstInputError(node, f"token index {i} is beyond the prompt: it has {len(roles)} positions "
                                             f"(0-{len(roles) - 1}). Use 'auto' or smaller indices.")
        if i >= kept:
            raise ShapeFirstInputError(node, f"token index {i} was not kept: the capture keeps maps for positions "
                                             f"0-{kept - 1}. Raise max_tokens in Attention Map Capture.")
    return picked


def select_steps(node: str, text: str, recorded: list[int], auto_count: int = 6) -> list[int]:
    """'auto' = up to ``auto_count`` recorded steps evenly spread (first and last included); 'all'; or numbers."""
    t = str(text).strip().lower()
    if t == "all":
        return list(recorded)
    if t in ("", "auto"):
        n = len(recorded)
        if n <= auto_count:
            return list(recorded)
        idx = sorted({round(k * (n - 1) / (auto_count - 1)) for k in range(auto_count)})
        return [recorded[i] for i in idx]
    picked = parse_numbers(node, "steps", text)
    missing = [s for s in picked if s not in recorded]
    if missing:
        shown = ", ".join(map(str, recorded[:12])) + (" ..." if len(recorded) > 12 else "")
        raise ShapeFirstInputError(node, f"step {missing[0]} was not recorded; recorded steps: {shown}. "
                                         "Use 'auto', 'all' or recorded steps.")
    return picked


def save_temp_png(array, tag: str) -> dict:
    """Save a uint8 array as a PNG in ComfyUI's temp folder (what /view?type=temp serves)."""
    import folder_paths
    from PIL import Image

    folder = folder_paths.get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    filename = f"shapefirst_attention_{secrets.token_hex(6)}_{tag}.png"
    Image.fromarray(array).save(os.path.join(folder, filename), compress_level=1)
    return {"filename": filename, "subfolder": "", "type": "temp"}
