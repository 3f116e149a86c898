"""Tier 2: token roles and the EOS swap on Wan (umT5) and Lumina 2 (Gemma 2). Their tokenizers ship
inside users' weights, so the encoders are ComfyUI's own classes on the sentencepiece model ComfyUI
ships (AuraFlow's), seeded (devtools.families.build_text_encoder), as in the family workflow runs.

Positions come from that sentencepiece model itself (its ids, ``</s>`` and ``<s>`` ids), never from
the pack; every expected row is indexed out of core CLIPTextEncode outputs. Wan's swap is also
sampled with the tiny Wan 2.1 model and compared bit for bit with sampling from the expected rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import text_encoders
from devtools import families
from devtools.harness import GraphError
from eos_reference import BIRD, CHAIR, OPTS, SKYLINE
from test_eos_swap_families import Swap, t5_reference

pytestmark = pytest.mark.comfy
WAN_LENGTH = 512  # ComfyUI's umT5 tokenizer pads every prompt to 512 tokens


@pytest.fixture(scope="module")
def spm(comfy):
    """The sentencepiece model both tokenizers run on, read by sentencepiece itself."""
    import comfy.text_encoders.wan as wan
    import sentencepiece

    path = Path(wan.__file__).parent / "t5_pile_tokenizer" / "tokenizer.model"
    return sentencepiece.SentencePieceProcessor(model_proto=path.read_bytes())


@pytest.fixture(scope="module")
def clips(comfy):
    text_encoders.register_held_clips(wan=families.build_text_encoder("wan"),
                                      lumina2=families.build_text_encoder("lumina2"))
    yield text_encoders.HeldCLIP.CLIPS
    text_encoders.unregister_held_clips()


@pytest.mark.parametrize("a,b", [(BIRD, SKYLINE), (SKYLINE, CHAIR)])
def test_wan_roles_position_by_position(comfy, clips, spm, a, b):
    """umT5: no [SOS]; the prompt's pieces are SEM, the first </s> is [EOS], padding (id 0) follows."""
    s = Swap(comfy, "wan", a, b)
    ids_a, ids_b = (ids[0] for ids in s.ids["umt5xxl"])
    end = spm.eos_id()
    assert ids_a == spm.encode(a) + [end] + [0] * (WAN_LENGTH - len(spm.encode(a)) - 1)
    assert s.cond.shape == s.a.shape == (1, WAN_LENGTH, 4096)
    assert torch.equal(s.cond, t5_reference(s.a, s.b, ids_a, ids_b, end=end))
    n = len(spm.encode(a))
    assert torch.equal(s.cond[0, :n], s.a[0, :n]) and not torch.equal(s.cond[0, n], s.a[0, n])
    kept = Swap(comfy, "wan", a, b, padding_is_eos=False)  # only </s> swapped, A's padding rows stay
    assert torch.equal(kept.cond, t5_reference(kept.a, kept.b, ids_a, ids_b, padding_is_eos=False, end=end))
    assert "umt5xxl" in s.table


def test_lumina2_roles_position_by_position(comfy, clips, spm):
    """Gemma 2: <s> at position 0 is [SOS], the prompt's pieces SEM, no end token."""
    s = Swap(comfy, "lumina2", SKYLINE, BIRD, sos_from="B", eos_from="A")
    ids_a, ids_b = (ids[0] for ids in s.ids["gemma2_2b"])
    assert ids_a == [spm.bos_id()] + spm.encode(SKYLINE) and ids_b == [spm.bos_id()] + spm.encode(BIRD)
    expected = s.a.clone()
    expected[0, 0] = s.b[0, 0]  # [SOS] from B, every prompt row A's
    assert torch.equal(s.cond, expected) and s.cond.shape == (1, len(ids_a), 64)
    assert torch.equal(s.extras["attention_mask"], s.a_extras["attention_mask"])

    sem = Swap(comfy, "lumina2", SKYLINE, BIRD, sem_from="B", eos_from="A")
    expected = s.a.clone()
    n_b = len(ids_b) - 1
    for k in range(len(ids_a) - 1):  # A's k-th prompt slot <- B's k-th prompt row, B's last repeated
        expected[0, 1 + k] = sem.b[0, 1 + min(k, n_b - 1)]
    assert torch.equal(sem.cond, expected)


def test_lumina2_refuses_an_eos_swap_it_cannot_do(comfy, clips):
    with pytest.raises(GraphError, match=r"EOSSwapConditioning: the Lumina 2 \(Gemma 2\) text encoder \(gemma2_2b\) "
                                         r"has no \[EOS\]-like token.* Set eos_from to A and swap another class"):
        Swap(comfy, "lumina2", BIRD, CHAIR)


@pytest.mark.parametrize("name, opts, message", [
    ("wan", {"swap_encoders": "t5xxl"}, r"swap_encoders names 't5xxl', but this Wan \(umT5-XXL\) CLIP has umt5xxl; "
                                        r"write 'all' or some of those names"),
    ("lumina2", {"layout": "[SOS] + 76 x [EOS]", "eos_from": "A"},
     r"need a \[SOS\] token and fixed-length chunks, which the Lumina 2 \(Gemma 2\) tokenizer does not have"),
    ("wan", {"clip_b": "lumina2"}, r"prompt A is encoded by a Wan \(umT5-XXL\) CLIP \(umt5xxl\) but clip_b is Lumina 2 "
                                   r"\(Gemma 2\) \(gemma2_2b\);.* Connect a CLIP of the same model family to clip_b"),
])
def test_refusals_name_the_node_and_the_fix(comfy, clips, name, opts, message):
    with pytest.raises(GraphError, match="EOSSwapConditioning: .*" + message):
        Swap(comfy, name, BIRD, CHAIR, **opts)


class HeldConditioning(text_encoders.Held):
    """Test only: hands the graph a conditioning built in the test (the expected rows)."""

    NODE_ID = "ShapeFirstTestHeldConditioning"
    VALUES: dict = {}
    RETURN_TYPES = ("CONDITIONING",)


def test_wan_swap_samples_like_its_expected_rows(comfy, clips, spm, family_models):
    """The swap in a real Wan 2.1 graph (tiny model, 2 steps, 5 frames): the same latent as sampling
    from the expected conditioning, and not the same as plain A."""
    import nodes

    s = Swap(comfy, "wan", BIRD, CHAIR)
    ids_a, ids_b = (ids[0] for ids in s.ids["umt5xxl"])
    HeldConditioning.VALUES["expected"] = [[t5_reference(s.a, s.b, ids_a, ids_b, end=spm.eos_id()), {}]]
    nodes.NODE_CLASS_MAPPINGS[HeldConditioning.NODE_ID] = HeldConditioning
    clip = ["1", 0]
    g = {"1": {"class_type": text_encoders.HeldCLIP.NODE_ID, "inputs": {"name": "wan"}},
         "2": {"class_type": "UNETLoader", "inputs": {"unet_name": family_models["wan21_t2v"], "weight_dtype": "default"}},
         "3": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["2", 0], "shift": 8.0}},
         "4": {"class_type": "CLIPTextEncode", "inputs": {"text": BIRD, "clip": clip}},
         "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
         "6": {"class_type": "EOSSwapConditioning", "inputs": {"clip": clip, "prompt_a": BIRD, "prompt_b": CHAIR,
                                                              **OPTS}},
         "7": {"class_type": HeldConditioning.NODE_ID, "inputs": {"name": "expected"}},
         "8": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 5,
                                                                   "batch_size": 1}}}
    for nid, positive in (("10", "6"), ("11", "7"), ("12", "4")):
        g[nid] = {"class_type": "KSampler", "inputs": {
            "model": ["3", 0], "seed": 3, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": [positive, 0], "negative": ["5", 0], "latent_image": ["8", 0], "denoise": 1.0}}
    try:
        with torch.inference_mode():
            r = comfy.run(g, outputs=["10", "11", "12"])
    finally:
        nodes.NODE_CLASS_MAPPINGS.pop(HeldConditioning.NODE_ID, None)
        HeldConditioning.VALUES.clear()
    swapped, expected, plain = (r.output_value(n, 0)["samples"] for n in ("10", "11", "12"))
    assert swapped.shape == (1, 16, 2, 8, 8)
    assert torch.equal(swapped, expected)
    assert not torch.equal(swapped, plain)


def test_kv_patch_refuses_a_model_whose_keys_and_values_it_cannot_split(comfy, family_models):
    """SD3's joint attention has no separate text Keys/Values to split: a Keys-only / Values-only swap would
    silently act on both or neither, so EOS Swap K/V Patch refuses the model with the fix."""
    g = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": family_models["sd3"], "weight_dtype": "default"}},
         "2": {"class_type": "EOSSwapKVPatch", "inputs": {"model": ["1", 0]}}}
    with pytest.raises(GraphError, match=r"EOSSwapKVPatch: EOS Swap K/V Patch does not apply to this model \(SD3, "
                                         r"OpenAISignatureMMDITWrapper\): joint attention: .* no Keys/Values pair of the "
                                         r"prompt to split\. It works with .*; remove it and use EOS Swap Conditioning "
                                         r"with apply_to 'keys and values' on this model"):
        comfy.run(g, outputs=["2"])


@pytest.mark.parametrize("apply_to", ["keys only", "values only"])
def test_wan_keys_and_values_come_from_two_contexts(comfy, clips, spm, family_models, apply_to):
    """Wan with EOS Swap K/V Patch: in a block's cross-attention the positive's K projection reads the
    embedded Keys context and its V projection the embedded Values context (swap or A's own rows, as
    asked); the negative's K and V both read its own. Recorded with forward hooks on block 0's k and v."""
    s = Swap(comfy, "wan", BIRD, CHAIR)
    ids_a, ids_b = (ids[0] for ids in s.ids["umt5xxl"])
    swapped = t5_reference(s.a, s.b, ids_a, ids_b, end=spm.eos_id())
    keys, values = (swapped, s.a) if apply_to == "keys only" else (s.a, swapped)
    clip = ["1", 0]
    g = {"1": {"class_type": text_encoders.HeldCLIP.NODE_ID, "inputs": {"name": "wan"}},
         "2": {"class_type": "UNETLoader", "inputs": {"unet_name": family_models["wan21_t2v"], "weight_dtype": "default"}}}
    loaded = comfy.run(g, outputs=["2"]).output_value("2", 0)
    g.update({
        "3": {"class_type": "EOSSwapKVPatch", "inputs": {"model": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
        "5": {"class_type": "EOSSwapConditioning", "inputs": {"clip": clip, "prompt_a": BIRD, "prompt_b": CHAIR,
                                                              **{**OPTS, "apply_to": apply_to}}},
        "6": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 5,
                                                                  "batch_size": 1}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": BIRD, "clip": clip}}})
    for nid, model, positive in (("10", "3", "5"), ("11", "3", "7"), ("12", "2", "7")):
        g[nid] = {"class_type": "KSampler", "inputs": {
            "model": [model, 0], "seed": 3, "steps": 1, "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": [positive, 0], "negative": ["4", 0], "latent_image": ["6", 0], "denoise": 1.0}}
    net = loaded.model.diffusion_model
    attn = net.blocks[0].cross_attn
    seen = {"k": [], "v": []}
    hooks = [getattr(attn, n).register_forward_hook(lambda m, inp, out, n=n: seen[n].append(inp[0].detach().clone()))
             for n in ("k", "v")]
    try:
        with torch.inference_mode():
            r = comfy.run({k: v for k, v in g.items() if k != "11" and k != "12"}, fresh_cache=False, outputs=["10"])
            first = {n: list(v) for n, v in seen.items()}
            r2 = comfy.run(g, fresh_cache=False, outputs=["11", "12"])
    finally:
        for h in hooks:
            h.remove()
    with torch.inference_mode():
        embed = {name: net.text_embedding(t.to(torch.float32)) for name, t in
                 (("keys", keys), ("values", values), ("neg", r.output_value("4", 0)[0][0]))}
    (k_in,), (v_in,) = first["k"], first["v"]  # one step, cond and uncond in one batch
    assert k_in.shape[0] == 2
    close = lambda x, y: torch.allclose(x, y[0].to(x), atol=1e-5)
    pos = next(i for i in range(2) if close(k_in[i], embed["keys"]))
    assert close(v_in[pos], embed["values"])
    assert not close(v_in[pos], embed["keys"])  # K and V really come from two contexts
    assert close(k_in[1 - pos], embed["neg"]) and close(v_in[1 - pos], embed["neg"])
    # without a K/V conditioning the patched model samples exactly as the user's model
    assert torch.equal(r2.output_value("11", 0)["samples"], r2.output_value("12", 0)["samples"])
