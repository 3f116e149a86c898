"""Tier 2 (ComfyUI imported, no weights): token roles of the modern families, position by position,
against the families' own tokenizers. Expected ids come from the Hugging Face tokenizer each
ComfyUI tokenizer wraps, applied to the prompt and to the template's text on their own."""

from __future__ import annotations

import types

import pytest
import torch

from shapefirst.tokens import EOS, PAD, SEM, SOS, TokenLayoutError, flat_roles, prompt_roles

pytestmark = pytest.mark.comfy
PROMPTS = ["A blue bird", "a (blue:1.3) bird, feathers", "The sharp, angular edges of the city skyline."]


def spec_and_tokens(tokenizer_class, text):
    """The pack's description of a CLIP with this tokenizer (as loaded by ComfyUI), and the tokens."""
    import sys

    import nodes

    eos_swap = sys.modules[nodes.NODE_CLASS_MAPPINGS["EOSSwapConditioning"].__module__]
    tok = tokenizer_class()
    spec = eos_swap.ct.clip_spec(types.SimpleNamespace(tokenizer=tok))
    return spec, tok, tok.tokenize_with_weights(text, return_word_ids=True)


def hf_ids(sub, text):
    return list(sub.tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("family", ["qwen_image", "z_image"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_llm_template_prompt_and_end_of_turn(comfy, family, prompt):
    import comfy.text_encoders.qwen_image as qwen_image
    import comfy.text_encoders.z_image as z_image

    cls = {"qwen_image": qwen_image.QwenImageTokenizer, "z_image": z_image.ZImageTokenizer}[family]
    spec, tok, tokens = spec_and_tokens(cls, prompt)
    (enc,) = spec.encoders
    sub = getattr(tok, tok.clip)
    before, after = tok.llama_template.split("{}")
    ids = [int(t[0]) for t in tokens[enc.key][0]]
    expected = hf_ids(sub, before) + hf_ids(sub, prompt) + hf_ids(sub, after)
    assert ids == expected  # the template applied as the family's tokenizer does
    roles = flat_roles(prompt_roles(tokens[enc.key], enc.info))
    n_pre, n_sem = len(hf_ids(sub, before)), len(hf_ids(sub, prompt))
    assert roles == [SOS] * n_pre + [SEM] * n_sem + [EOS] * len(hf_ids(sub, after))
    assert sub.inv_vocab[ids[n_pre + n_sem]] == "<|im_end|>" and sub.inv_vocab[ids[n_pre - 1]] == "Ċ"
    assert enc.drop_prefix == (family == "qwen_image")


def test_qwen_image_cuts_exactly_the_template_prefix_from_its_rows(comfy, monkeypatch):
    """ComfyUI's own QwenImageTEModel.encode_token_weights, run on a stand-in for the transformer that
    returns each position's index: its first kept row is the first prompt token."""
    import comfy.sd1_clip as sd1
    import comfy.text_encoders.qwen_image as qwen_image

    spec, tok, tokens = spec_and_tokens(qwen_image.QwenImageTokenizer, PROMPTS[0])
    pairs = {k: [[(t[0], t[1]) for t in c] for c in v] for k, v in tokens.items()}
    n = len(pairs["qwen25_7b"][0])
    monkeypatch.setattr(sd1.SD1ClipModel, "encode_token_weights", lambda self, p: (
        torch.arange(n, dtype=torch.float32)[None, :, None], None, {"attention_mask": torch.ones(1, n)}))
    out, _, _ = qwen_image.QwenImageTEModel.encode_token_weights(object.__new__(qwen_image.QwenImageTEModel), pairs)
    assert int(out[0, 0, 0]) == len(spec.encoders[0].info.prefix) == 34


def test_a_prompt_with_its_own_template_does_not_fit_the_family_template(comfy):
    import comfy.text_encoders.qwen_image as qwen_image

    spec, _, tokens = spec_and_tokens(qwen_image.QwenImageTokenizer, "<|im_start|>user\nA bird<|im_end|>\n")
    with pytest.raises(TokenLayoutError, match="template"):
        prompt_roles(tokens["qwen25_7b"], spec.encoders[0].info)


@pytest.mark.parametrize("family, length", [("sd3", 77), ("flux", 256)])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_t5_roles_in_sd3_and_flux(comfy, family, length, prompt):
    import comfy.text_encoders.flux as flux
    import comfy.text_encoders.sd3_clip as sd3

    cls = {"sd3": sd3.SD3Tokenizer, "flux": flux.FluxTokenizer}[family]
    spec, tok, tokens = spec_and_tokens(cls, prompt)
    t5 = next(e for e in spec.encoders if e.key == "t5xxl")
    assert t5.info.start is None and t5.has_rows and t5.pooled is None
    ids = [int(t[0]) for t in tokens["t5xxl"][0]]
    words = hf_ids(tok.t5xxl, prompt.replace("(blue:1.3)", "blue"))  # ComfyUI strips the weight syntax
    assert ids == words + [1] + [0] * (length - len(words) - 1)
    roles = flat_roles(prompt_roles(tokens["t5xxl"], t5.info))
    assert roles == [SEM] * len(words) + [EOS] + [PAD] * (length - len(words) - 1)
    clip_l = next(e for e in spec.encoders if e.key == "l")
    assert clip_l.pooled == (0, 768) and clip_l.has_rows == (family == "sd3")
    assert [e.name for e in spec.encoders] == (["clip_l", "clip_g", "t5xxl"] if family == "sd3" else ["clip_l", "t5xxl"])


def _labels(tok, text):
    import sys

    import nodes

    view = sys.modules[nodes.NODE_CLASS_MAPPINGS["AttentionMapView"].__module__]
    clip = types.SimpleNamespace(tokenizer=tok, tokenize=lambda t, return_word_ids=False:
                                 tok.tokenize_with_weights(t, return_word_ids))
    return view.prompt_tokens("AttentionMapView", clip, text)


def test_attention_labels_of_a_known_family_and_of_an_unknown_tokenizer_agree(comfy):
    import comfy.sd1_clip as sd1

    class OtherTokenizer(sd1.SD1Tokenizer):  # a family the pack does not list: read generically
        pass

    labels, roles = _labels(sd1.SD1Tokenizer(), "A blue bird")
    assert labels[:5] == ["[SOS]", "a", "blue", "bird", "[EOS]"] and roles[:5] == [SOS, SEM, SEM, SEM, EOS]
    assert len(labels) == 77 and set(roles[5:]) == {PAD}
    assert _labels(OtherTokenizer(), "A blue bird") == (labels, roles)


def test_attention_labels_of_qwen_image_are_its_rows(comfy):
    import comfy.text_encoders.qwen_image as qwen_image

    labels, roles = _labels(qwen_image.QwenImageTokenizer(), "A blue bird")
    assert labels == ["A", "blue", "bird"] + ["[EOS]"] * 5 and roles == [SEM] * 3 + [EOS] * 5


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_attention_labels_of_sd3_and_flux_cover_every_row_of_the_conditioning(comfy, family):
    """SD3's conditioning is clip_l's 77 rows (clip_g beside it on channels) then T5's; Flux's is T5's
    alone (clip_l gives only the pooled vector). The view's roles must have one entry per row."""
    import comfy.text_encoders.flux as flux
    import comfy.text_encoders.sd3_clip as sd3

    tok = {"sd3": sd3.SD3Tokenizer, "flux": flux.FluxTokenizer}[family]()
    labels, roles = _labels(tok, "A blue bird")
    words = len(hf_ids(tok.t5xxl, "A blue bird"))
    t5 = [SEM] * words + [EOS] + [PAD] * ((77 if family == "sd3" else 256) - words - 1)
    if family == "sd3":
        assert roles == [SOS] + [SEM] * 3 + [EOS] + [PAD] * 72 + t5
        assert labels[:5] == ["[SOS]", "a", "blue", "bird", "[EOS]"] and labels[77:77 + words + 1][-1] == "[EOS]"
    else:
        assert roles == t5 and "[SOS]" not in labels
