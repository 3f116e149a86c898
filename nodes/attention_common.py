"""Helpers shared by Attention Map View and Attention Map Compare: checking that a capture holds
the run that produced the connected images, token labels from CLIP (nodes._clip_tokens),
selections (shapefirst.selection)."""

from __future__ import annotations

import torch

from ..shapefirst import selection, swap
from ..shapefirst.attention import BRANCH_NAMES, COND, UNCOND, AttentionRun
from ..shapefirst.tokens import TokenLayoutError, flat_roles, prompt_roles, token_labels
from . import _clip_tokens as ct
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
    if run.frames:
        too_few = run.total_frames > 1 and images.shape[0] < run.videos * 2  # a video decodes to several frames
        if images.shape[0] % run.videos or too_few:
            raise ShapeFirstInputError(
                node, f"the IMAGE input holds {images.shape[0]} image{'s' if images.shape[0] != 1 else ''} but the "
                      f"captured run sampled {run.videos} "
                      f"video{'s' if run.videos != 1 else ''} of {run.total_frames} latent frames. Connect the decoded "
                      "frames (VAE Decode) of the sampler that uses this capture's MODEL.")
    elif images.shape[0] != run.batch:
        raise ShapeFirstInputError(
            node, f"the IMAGE input holds {images.shape[0]} images but the captured run sampled {run.batch}. Connect "
                  "the decoded output of the sampler that uses this capture's MODEL.")
    (lh, lw), (h, w) = run.latent_hw, images.shape[1:3]
    if h % lh or w % lw or h // lh != w // lw:
        raise ShapeFirstInputError(
            node, f"the IMAGE input is {w}x{h} px, which is not the captured {lw}x{lh} latent decoded. Connect the "
                  "decoded output of the sampler that uses this capture's MODEL.")
    if not 0 <= batch_index < run.batch:
        which = "0" if run.batch == 1 else f"0-{run.batch - 1}"
        what_ = (f"{run.batch} recorded frames ({run.videos} video{'s' if run.videos != 1 else ''} x latent frames "
                 f"{run.frames}; index = video x {len(run.frames)} + kept frame)") if run.frames else \
            f"batch of {run.batch} image{'s' if run.batch != 1 else ''}"
        raise ShapeFirstInputError(node, f"batch_index {batch_index} is outside the {what_}: use an index in {which}.")
    return run, branch


def prompt_tokens(node: str, clip, prompt: str) -> tuple[list[str], list[str]]:
    """(labels, roles) for every row of ``prompt``'s conditioning as ``clip`` tokenizes it: per
    segment of rows (``shapefirst.swap.locate``), the first encoder giving rows there (clip_l for
    SD1.x / SDXL; SD3: clip_l's 77 rows, then T5's, with T5's roles: no [SOS], SEM, ``</s>`` as
    [EOS], padding). Tokenizers of unknown families are read generically (start / end / pad tokens
    of their first sub-tokenizer with a vocabulary)."""
    if clip is None or not hasattr(clip, "tokenize"):
        raise ShapeFirstInputError(node, "'clip' must be the CLIP model that encoded the prompt (from the checkpoint loader).")
    try:
        spec = ct.clip_spec(clip, strict=False)
    except ct.UnknownClipError as exc:
        raise ShapeFirstInputError(node, f"this CLIP's tokenizer is not supported for token labels ({exc}); connect "
                                         "the checkpoint's CLIP.") from None
    tokens = ct.tokenize(clip, str(prompt))
    encoders = spec.row_encoders or spec.encoders[:1]
    segments = sorted({e.segment or 0 for e in encoders})
    labels, flat = [], []
    for seg in segments:
        members = [e for e in encoders if (e.segment or 0) == seg and (e.key in tokens or len(segments) == 1)]
        if not members:
            continue
        rows = []
        for enc in members:
            chunks = tokens.get(enc.key) or tokens[next(iter(tokens))]
            try:
                roles = flat_roles(swap.row_roles(enc, prompt_roles(chunks, enc.info)))
            except TokenLayoutError as exc:
                raise ShapeFirstInputError(node, f"the prompt does not follow the {spec.kind} chat template ({exc}); "
                                                 "type the prompt alone, as in CLIP Text Encode.") from None
            rows.append((token_labels([swap.row_entries(enc, chunks)], enc.inv_vocab, roles), roles))
        count = min(len(r[1]) for r in rows)  # side-by-side encoders are cut to a common length
        labels += rows[0][0][:count]
        flat += rows[0][1][:count]
    return labels, flat


def check_prompt_length(node: str, run: AttentionRun, branch: int, roles: list[str], what: str = "capture") -> None:
    captured = run.token_count.get(branch, 0)
    if captured != len(roles):
        raise ShapeFirstInputError(
            node, f"the prompt has {len(roles)} token positions but '{what}' recorded {captured} for the "
                  f"{BRANCH_NAMES[branch]} branch. Connect the CLIP and the exact prompt text of that branch's "
                  "conditioning (the negative prompt for 'uncond').")


def select_tokens(node: str, text: str, roles: list[str], kept: int) -> list[int]:
    """shapefirst.selection.select_tokens, its errors naming ``node``."""
    try:
        return selection.select_tokens(text, roles, kept)
    except selection.SelectionError as exc:
        raise ShapeFirstInputError(node, str(exc)) from None


def select_steps(node: str, text: str, recorded: list[int], auto_count: int = 6) -> list[int]:
    """shapefirst.selection.select_steps, its errors naming ``node``."""
    try:
        return selection.select_steps(text, recorded, auto_count)
    except selection.SelectionError as exc:
        raise ShapeFirstInputError(node, str(exc)) from None
