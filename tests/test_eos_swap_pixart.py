"""Tier 2: EOSSwapConditioning with PixArt's T5 text encoder (no [SOS], no padding by default).

No T5-XXL checkpoint can be built on a CPU, so this builds ComfyUI's own PixArt CLIP (real
PixArtTokenizer, real T5 classes) with one encoder layer through ComfyUI's
``t5xxl_model_config`` option, seeded random weights, and the real 4096-wide embeddings.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def t5_clip(comfy):
    from devtools import checkpoints
    import comfy.sd as sd
    import comfy.text_encoders.pixart_t5 as pixart

    class Target:
        clip = pixart.PixArtT5XXL
        tokenizer = pixart.PixArtTokenizer
        params = {}

    config = {"num_layers": 1, "d_ff": 64, "num_heads": 2, "d_kv": 16}
    clip = sd.CLIP(target=Target, model_options={"t5xxl_model_config": config, "dtype": torch.float32})
    model = clip.cond_stage_model
    norms = tuple(n for n, _ in model.named_parameters() if n.endswith("layer_norm.weight") or n.endswith("logit_scale"))
    checkpoints.init_default(model, 7, constants=norms)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.fill_(1.0)
    return clip


def _encode(clip, text):
    import nodes

    return nodes.CLIPTextEncode().encode(clip, text)[0][0][0]


def _swap(clip, a, b, **opts):
    import nodes

    node = nodes.NODE_CLASS_MAPPINGS["EOSSwapConditioning"]
    with torch.inference_mode():
        out = node.execute(clip, a, b, **opts)
    return out.args[0][0][0], out.args[1]


def _ids(clip, text):
    return [int(t) for t, _ in clip.tokenize(text)["t5xxl"][0]]


def test_t5_has_no_sos_and_its_single_eos_row_is_swapped(t5_clip):
    a, b = "A blue bird", "The sharp, angular edges of the city skyline pierced the clouds."
    ids_a, ids_b = _ids(t5_clip, a), _ids(t5_clip, b)
    assert ids_a[-1] == 1 and ids_a.count(1) == 1 and 0 not in ids_a  # ends with </s>, no padding, no start
    with torch.inference_mode():
        enc_a, enc_b = _encode(t5_clip, a), _encode(t5_clip, b)
    cond, table = _swap(t5_clip, a, b)
    n = len(ids_a) - 1
    assert cond.shape == enc_a.shape == (1, n + 1, 4096)
    assert torch.equal(cond[0, :n], enc_a[0, :n])  # every semantic row is A's (no [SOS] row)
    assert torch.equal(cond[0, n], enc_b[0, len(ids_b) - 1])  # A's </s> row <- B's </s> row
    assert "[SOS]" not in table.split("\n\n", 1)[1]


def test_t5_padding_from_a_minimum_length_counts_as_eos(t5_clip):
    clip = t5_clip.clone()
    clip.set_tokenizer_option("t5xxl_min_length", 12)
    a, b = "A blue bird", "A brown chair"
    ids_a, ids_b = _ids(clip, a), _ids(clip, b)
    assert len(ids_a) == 12 and ids_a[-1] == 0
    with torch.inference_mode():
        enc_a, enc_b = _encode(clip, a), _encode(clip, b)
    cond, _ = _swap(clip, a, b)
    ea, eb = ids_a.index(1), ids_b.index(1)
    assert torch.equal(cond[0, :ea], enc_a[0, :ea])
    assert torch.equal(cond[0, ea:], enc_b[0, eb:eb + 12 - ea])
    kept, _ = _swap(clip, a, b, padding_is_eos=False)
    assert torch.equal(kept[0, ea], enc_b[0, eb]) and torch.equal(kept[0, ea + 1:], enc_a[0, ea + 1:])


def test_sos_layouts_need_a_start_token(t5_clip):
    with pytest.raises(ValueError, match=r"EOSSwapConditioning: the layouts '77 x \[SOS\]' and .* need a \[SOS\] "
                                         r"token and fixed-length chunks, which the PixArt \(T5-XXL\) tokenizer does not have"):
        _swap(t5_clip, "A blue bird", "A brown chair", layout="77 x [SOS]")
