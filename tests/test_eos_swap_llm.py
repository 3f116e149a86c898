"""Tier 2: EOSSwapConditioning on LLM text encoders with a chat template. Z-Image (Qwen3, template
kept in the rows) runs through the executor on a reduced-size encoder of ComfyUI's own classes;
Qwen-Image's refusals happen before encoding, so its real tokenizer alone is enough.

Expected rows by plain indexing from core CLIPTextEncode outputs: the template's closing tokens
(``<|im_end|>\\n<|im_start|>assistant\\n``, 5 tokens) are the last rows of every prompt here.
"""

from __future__ import annotations

import pytest
import torch

import text_encoders
from eos_reference import BIRD, CHAIR, SKYLINE
from devtools.harness import GraphError
from test_eos_swap_families import Swap

pytestmark = pytest.mark.comfy
CLOSING = 5


@pytest.fixture(scope="module")
def clips(comfy):
    text_encoders.register_held_clips(z_image=text_encoders.z_image(), qwen_image=text_encoders.qwen_image())
    yield text_encoders.HeldCLIP.CLIPS
    text_encoders.unregister_held_clips()


@pytest.mark.parametrize("a,b", [(BIRD, SKYLINE), (SKYLINE, CHAIR)])
def test_z_image_end_of_turn_rows_come_from_b(comfy, clips, a, b):
    s = Swap(comfy, "z_image", a, b)
    ids_a, ids_b = (ids[0] for ids in s.ids["qwen3_4b"])
    assert ids_a[:3] == ids_b[:3] and ids_a[-CLOSING:] == ids_b[-CLOSING:]  # same template around both
    assert s.cond.shape == s.a.shape == (1, len(ids_a), 64)
    expected = s.a.clone()
    expected[0, -CLOSING:] = s.b[0, -CLOSING:]
    assert torch.equal(s.cond, expected)
    assert "[SOS]" in s.table and "<|im_end|>" in s.table


def test_z_image_template_rows_and_semantic_rows_from_b(comfy, clips):
    s = Swap(comfy, "z_image", BIRD, SKYLINE, sos_from="B", sem_from="B", eos_from="A")
    n = len(s.ids["qwen3_4b"][0][0])
    expected = s.a.clone()
    expected[0, :3] = s.b[0, :3]  # the template's opening rows
    expected[0, 3:n - CLOSING] = s.b[0, 3:n - CLOSING]  # A's 3 prompt slots <- B's first 3 prompt rows
    assert torch.equal(s.cond, expected)
    zeros = Swap(comfy, "z_image", BIRD, CHAIR, eos_from="zeros")
    assert not zeros.cond[0, -CLOSING:].any() and torch.equal(zeros.cond[0, :-CLOSING], zeros.a[0, :-CLOSING])


def test_qwen_image_prompt_with_its_own_template_is_refused(comfy):
    import comfy.sd as sd
    import comfy.text_encoders.qwen_image as qwen_image
    import nodes

    clip = sd.CLIP(no_init=True)
    clip.tokenizer = qwen_image.QwenImageTokenizer()
    clip.tokenizer_options = {}
    node = nodes.NODE_CLASS_MAPPINGS["EOSSwapConditioning"]
    with pytest.raises(ValueError, match=r"EOSSwapConditioning: prompt B does not follow the Qwen-Image \(Qwen2.5-VL\) "
                                         r"chat template .* type the prompt alone, without template tokens"):
        node.execute(clip, BIRD, "<|im_start|>user\nA chair<|im_end|>\n")


def test_a_prompt_in_another_familys_template_is_refused_in_a_graph(comfy, clips):
    """Z-Image's template typed into Qwen-Image: ComfyUI then skips Qwen-Image's own template (its system
    prompt), so the rows do not follow the family's layout; the node says so and how to fix it."""
    z_image_templated = "<|im_start|>user\nA blue bird<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(GraphError, match=r"EOSSwapConditioning: prompt A does not follow the Qwen-Image "
                                         r"\(Qwen2.5-VL\) chat template .* type the prompt alone, without template "
                                         r"tokens such as <\|im_start\|>"):
        Swap(comfy, "qwen_image", z_image_templated, CHAIR)
    s = Swap(comfy, "qwen_image", BIRD, CHAIR)  # the same encoder with plain prompts: A's rows, B's end of turn
    expected = s.a.clone()
    expected[0, -CLOSING:] = s.b[0, -CLOSING:]
    assert torch.equal(s.cond, expected)
