"""Tier 2: EOSSwapConditioning on SD3 (clip_l + clip_g + T5) and Flux (clip_l pooled + T5), run
through ComfyUI's executor on reduced-size text encoders of the real classes (tests/text_encoders.py).

Every expected row is rebuilt here by plain indexing from core CLIPTextEncode outputs of A and B
and the real tokenizers' ids: CLIP's [EOS] region starts at the first 49407 of each chunk, T5's at
the first ``</s>`` (id 1); SD3's T5 rows follow its 77 CLIP rows.
"""

from __future__ import annotations

import pytest
import torch

import text_encoders
from eos_reference import BIRD, CHAIR, OPTS, SKYLINE, reference_swap
from devtools.harness import GraphError

pytestmark = pytest.mark.comfy
T5_END = 1


@pytest.fixture(scope="module")
def clips(comfy):
    text_encoders.register_held_clips(sd3=text_encoders.sd3(), flux=text_encoders.flux(),
                                      sd3_no_t5=text_encoders.sd3(t5=False))
    yield text_encoders.HeldCLIP.CLIPS
    text_encoders.unregister_held_clips()


class Swap:
    """The node's output next to core CLIPTextEncode of A and B, through the real executor."""

    def __init__(self, comfy, name, a, b, clip_b=None, **opts):
        g = {"1": {"class_type": text_encoders.HeldCLIP.NODE_ID, "inputs": {"name": name}},
             "2": {"class_type": "CLIPTextEncode", "inputs": {"text": a, "clip": ["1", 0]}},
             "3": {"class_type": "CLIPTextEncode", "inputs": {"text": b, "clip": ["1", 0]}},
             "5": {"class_type": "EOSSwapConditioning",
                   "inputs": {"clip": ["1", 0], "prompt_a": a, "prompt_b": b, **OPTS, **opts}},
             "9": {"class_type": "PreviewAny", "inputs": {"source": ["5", 1]}}}
        if clip_b:
            g["6"] = {"class_type": text_encoders.HeldCLIP.NODE_ID, "inputs": {"name": clip_b}}
            g["5"]["inputs"]["clip_b"] = ["6", 0]
        with torch.inference_mode():
            r = comfy.run(g, outputs=["2", "3"])
        self.conditioning = r.output_value("5", 0)
        self.cond, self.extras = self.conditioning[0]
        self.a, self.a_extras = r.output_value("2", 0)[0]
        self.b, self.b_extras = r.output_value("3", 0)[0]
        self.table = r.output_value("5", 1)
        clip = text_encoders.HeldCLIP.CLIPS[name]
        self.ids = {k: (ids_of(clip, a, k), ids_of(clip, b, k)) for k in clip.tokenize(a)}


def ids_of(clip, text, key):
    return [[int(t) for t, _ in chunk] for chunk in clip.tokenize(text)[key]]


def t5_reference(enc_a, enc_b, ids_a, ids_b, offset_a=0, offset_b=0, padding_is_eos=True, end=T5_END):
    """A's rows with T5's [EOS] region (from the first </s>, id ``end``) filled from B's in order, B's last repeated."""
    out = enc_a.clone()
    ea, eb = ids_a.index(end), ids_b.index(end)
    stop_a = len(ids_a) if padding_is_eos else ea + 1
    stop_b = len(ids_b) if padding_is_eos else eb + 1
    for k, pos in enumerate(range(ea, stop_a)):
        out[0, offset_a + pos] = enc_b[0, offset_b + min(eb + k, stop_b - 1)]
    return out


@pytest.mark.parametrize("a,b", [(BIRD, CHAIR), (SKYLINE, BIRD)])
def test_sd3_each_encoder_swaps_its_own_eos_region_and_the_pooled_vector_is_b(comfy, clips, a, b):
    s = Swap(comfy, "sd3", a, b)
    (l_a, l_b), (t_a, t_b) = s.ids["l"], s.ids["t5xxl"]
    assert s.ids["g"][0][0][:5] == l_a[0][:5] and len(l_a) == 1  # same CLIP BPE, one chunk
    assert s.cond.shape == s.a.shape == (1, 77 + len(t_a[0]), 4096)
    expected = reference_swap(s.a, s.b, l_a, l_b, channels=slice(0, 2048))  # clip_l | clip_g rows
    expected = t5_reference(expected, s.b, t_a[0], t_b[0], offset_a=77, offset_b=77)
    assert torch.equal(s.cond, expected)
    assert torch.equal(s.cond[0, :77, 2048:], torch.zeros(77, 2048))  # SD3's zero padding of CLIP rows
    assert torch.equal(s.extras["pooled_output"], s.b_extras["pooled_output"])
    assert "clip_l, clip_g" in s.table and "- t5xxl" in s.table


def test_sd3_only_the_chosen_encoders_take_b(comfy, clips):
    s = Swap(comfy, "sd3", BIRD, SKYLINE, swap_encoders="t5xxl")
    (l_a, l_b), (t_a, t_b) = s.ids["l"], s.ids["t5xxl"]
    assert torch.equal(s.cond[0, :77], s.a[0, :77])
    assert torch.equal(s.cond, t5_reference(s.a, s.b, t_a[0], t_b[0], 77, 77))
    assert torch.equal(s.extras["pooled_output"], s.a_extras["pooled_output"])  # T5 has no pooled vector

    s = Swap(comfy, "sd3", BIRD, SKYLINE, swap_encoders="clip_l")
    expected = reference_swap(s.a, s.b, l_a, l_b, channels=slice(0, 768))
    assert torch.equal(s.cond, expected)
    pooled = s.extras["pooled_output"]
    assert torch.equal(pooled[:, :768], s.b_extras["pooled_output"][:, :768])
    assert torch.equal(pooled[:, 768:], s.a_extras["pooled_output"][:, 768:])


def test_sd3_pooled_vector_swapped_alone(comfy, clips):
    s = Swap(comfy, "sd3", BIRD, CHAIR, eos_from="A", pooled_from="B")
    assert torch.equal(s.cond, s.a)
    assert torch.equal(s.extras["pooled_output"], s.b_extras["pooled_output"])
    assert not torch.equal(s.a_extras["pooled_output"], s.b_extras["pooled_output"])


def test_flux_swaps_t5_rows_and_clip_l_pooled(comfy, clips):
    s = Swap(comfy, "flux", BIRD, SKYLINE)
    (t_a, t_b) = s.ids["t5xxl"]
    assert s.cond.shape == (1, 256, 4096) and len(t_a[0]) == 256
    assert torch.equal(s.cond, t5_reference(s.a, s.b, t_a[0], t_b[0]))
    assert torch.equal(s.extras["pooled_output"], s.b_extras["pooled_output"])
    kept = Swap(comfy, "flux", BIRD, SKYLINE, padding_is_eos=False, swap_encoders="t5xxl")
    assert torch.equal(kept.cond, t5_reference(kept.a, kept.b, t_a[0], t_b[0], padding_is_eos=False))
    assert torch.equal(kept.extras["pooled_output"], kept.a_extras["pooled_output"])
    pooled_only = Swap(comfy, "flux", BIRD, SKYLINE, swap_encoders="clip_l")
    assert torch.equal(pooled_only.cond, pooled_only.a)
    assert torch.equal(pooled_only.extras["pooled_output"], pooled_only.b_extras["pooled_output"])


def test_flux_zeros_noise_and_window(comfy, clips):
    s = Swap(comfy, "flux", BIRD, CHAIR, eos_from="zeros", start_percent=0.0, end_percent=0.4)
    ea = s.ids["t5xxl"][0][0].index(T5_END)
    assert torch.equal(s.cond[0, :ea], s.a[0, :ea]) and not s.cond[0, ea:].any()
    assert [c[1]["start_percent"] for c in s.conditioning] == [0.0, 0.4]
    assert torch.equal(s.conditioning[1][0], s.a) and s.conditioning[1][1]["end_percent"] == 1.0
    n = Swap(comfy, "flux", BIRD, CHAIR, sem_from="noise", noise_seed=3)
    sem = n.cond[0, :ea]
    assert not torch.equal(sem, n.a[0, :ea]) and torch.equal(n.cond[0, ea:], Swap(comfy, "flux", BIRD, CHAIR).cond[0, ea:])


@pytest.mark.parametrize("name, opts, message", [
    ("sd3", {"swap_encoders": "t5xxl, clip_h"}, r"swap_encoders names 'clip_h', but this SD3 CLIP has clip_l, "
                                                r"clip_g, t5xxl; write 'all' or some of those names"),
    ("sd3_no_t5", {"swap_encoders": "t5xxl"}, r"swap_encoders names 't5xxl', but this SD3 CLIP has clip_l, clip_g;"),
    ("sd3", {"layout": "77 x [SOS]"}, r"need a \[SOS\] token and fixed-length chunks, which the SD3 tokenizer does not have"),
    ("sd3", {"clip_b": "flux"}, r"prompt A is encoded by a SD3 CLIP \(clip_l, clip_g, t5xxl\) but clip_b is Flux "
                                r"\(clip_l, t5xxl\); .* Connect a CLIP of the same model family to clip_b"),
])
def test_refusals_name_the_node_and_the_fix(comfy, clips, name, opts, message):
    with pytest.raises(GraphError, match="EOSSwapConditioning.*" + message):
        Swap(comfy, name, BIRD, CHAIR, **opts)


def test_sd3_without_t5_swaps_its_clip_rows(comfy, clips):
    s = Swap(comfy, "sd3_no_t5", BIRD, CHAIR)
    l_a, l_b = s.ids["l"]
    assert s.cond.shape == (1, 77, 4096)
    assert torch.equal(s.cond, reference_swap(s.a, s.b, l_a, l_b, channels=slice(0, 2048)))
