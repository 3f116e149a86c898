"""Tier 1: chat-template roles and the per-encoder swap on multi-encoder layouts (SD3, Flux,
Qwen-Image) with hand-written roles and seeded tensors; expected rows by plain indexing."""

from __future__ import annotations

import pytest
import torch

from shapefirst import compose as cmp
from shapefirst import swap
from shapefirst.tokens import EOS, PAD, SEM, SOS, TokenizerInfo, TokenLayoutError, chunk_roles, repeat_semantic

LLM = TokenizerInfo(start=None, end=None, pad=0, max_length=None, prefix=(1, 2), suffix=(9, 8))
CLIP = TokenizerInfo(start=49406, end=49407, pad=49407, max_length=6)
T5 = TokenizerInfo(start=None, end=1, pad=0, max_length=None)
SOURCES = {SOS: cmp.A, SEM: cmp.A, EOS: cmp.B}


def entries(ids):
    return [(t, 1.0, 1) for t in ids]  # LLM encoders: word ids cover the template too


@pytest.mark.parametrize("ids, roles", [
    ([1, 2, 5, 6, 9, 8, 0, 0], [SOS, SOS, SEM, SEM, EOS, EOS, PAD, PAD]),
    ([0, 0, 1, 2, 5, 9, 8], [PAD, PAD, SOS, SOS, SEM, EOS, EOS]),  # padded on the left
    ([1, 2, 0, 9, 8], [SOS, SOS, SEM, EOS, EOS]),  # a prompt token equal to the pad id stays SEM
    ([1, 2, 9, 8], [SOS, SOS, EOS, EOS]),  # empty prompt
])
def test_template_roles(ids, roles):
    assert chunk_roles(entries(ids), LLM) == roles


@pytest.mark.parametrize("ids, where", [([7, 1, 2, 5, 9, 8], "start"), ([1, 2, 5, 9], "end"), ([1, 2, 5], "end")])
def test_a_prompt_with_another_template_is_refused(ids, where):
    with pytest.raises(TokenLayoutError, match=f"does not {where}"):
        chunk_roles(entries(ids), LLM)


def test_repeating_templated_semantic_tokens_keeps_the_whole_closing_template():
    out = repeat_semantic([entries([1, 2, 5, 6, 9, 8])], 2, LLM)
    assert [e[0] for e in out[0]] == [1, 2, 5, 6, 5, 6, 9, 8]


def _prompt(encoders, roles: dict, rows: int, channels: int, seed: int, pooled: int | None = None):
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn((1, rows, channels), generator=g)
    p = swap.EncodedPrompt({k: [(100 + i, 1.0, 1) for i in range(sum(map(len, r)))] for k, r in roles.items()},
                           roles, cond, None if pooled is None else torch.randn((1, pooled), generator=g))
    swap.locate(encoders, p)
    return p


SD3 = (swap.EncoderLayout("l", "clip_l", CLIP, 0, (0, 4), (0, 4)),
       swap.EncoderLayout("g", "clip_g", CLIP, 0, (4, 8), (4, 8)),
       swap.EncoderLayout("t5xxl", "t5xxl", T5, 1, (0, 12), None))
CLIP_A, CLIP_B = [SOS, SEM, SEM, EOS, PAD, PAD], [SOS, SEM, EOS, PAD, PAD, PAD]
T5_A, T5_B = [SEM, SEM, EOS, PAD], [SEM, EOS, PAD, PAD, PAD]


def _sd3_pair():
    a = _prompt(SD3, {"l": [CLIP_A], "g": [CLIP_A], "t5xxl": [T5_A]}, 10, 12, 0, pooled=8)
    b = _prompt(SD3, {"l": [CLIP_B], "g": [CLIP_B], "t5xxl": [T5_B]}, 11, 12, 1, pooled=8)
    return a, b


def test_sd3_segments_are_found_and_each_encoder_swaps_its_own_eos_region():
    a, b = _sd3_pair()
    assert a.spans == {"l": (0, 6), "g": (0, 6), "t5xxl": (6, 4)} and b.spans["t5xxl"] == (6, 5)
    out, ref, plans = swap.compose_all(SD3, a, b, cmp.LAYOUT_PROMPT, SOURCES, True, 0, {"l", "g", "t5xxl"})
    expected = a.cond.clone()
    expected[0, 3:6, 0:8] = b.cond[0, 2:5, 0:8]  # clip [EOS] + padding <- B's, in order
    expected[0, 8:10, :] = b.cond[0, 7:9, :]  # t5 </s> + padding <- B's </s> + padding
    assert torch.equal(out, expected) and torch.equal(ref, a.cond)
    assert [r.index for r in plans["t5xxl"]] == [0, 1, 1, 2]


def test_only_the_chosen_encoders_take_b_and_the_pooled_vector_follows_them():
    a, b = _sd3_pair()
    out, _, _ = swap.compose_all(SD3, a, b, cmp.LAYOUT_PROMPT, SOURCES, True, 0, {"t5xxl"})
    assert torch.equal(out[0, :6], a.cond[0, :6]) and torch.equal(out[0, 8:], b.cond[0, 7:9])
    pooled = swap.compose_pooled(SD3, a, b, "B", {"l", "t5xxl"})
    assert torch.equal(pooled[:, :4], b.pooled[:, :4]) and torch.equal(pooled[:, 4:], a.pooled[:, 4:])
    assert torch.equal(swap.compose_pooled(SD3, a, b, "A", {"l", "g"}), a.pooled)


def test_flux_clip_l_gives_only_the_pooled_vector():
    flux = (swap.EncoderLayout("l", "clip_l", CLIP, None, None, (0, 4)), swap.EncoderLayout("t5xxl", "t5xxl", T5, 0, (0, 12)))
    a = _prompt(flux, {"l": [CLIP_A], "t5xxl": [T5_A]}, 4, 12, 0, pooled=4)
    b = _prompt(flux, {"l": [CLIP_B], "t5xxl": [T5_B]}, 5, 12, 1, pooled=4)
    out, _, plans = swap.compose_all(flux, a, b, cmp.LAYOUT_PROMPT, SOURCES, False, 0, {"l", "t5xxl"})
    assert set(plans) == {"t5xxl"}
    expected = a.cond.clone()
    expected[0, 2] = b.cond[0, 1]  # padding stays A's when it does not count as [EOS]
    assert torch.equal(out, expected)
    assert torch.equal(swap.compose_pooled(flux, a, b, "B", {"l"}), b.pooled)


def test_rows_that_do_not_add_up_are_refused():
    p = swap.EncodedPrompt({}, {"l": [CLIP_A], "g": [CLIP_A], "t5xxl": [T5_A]}, torch.zeros(1, 9, 12))
    with pytest.raises(TokenLayoutError, match="the tokens give 10 rows but the conditioning has 9"):
        swap.locate(SD3, p)


def test_a_cut_template_prefix_leaves_the_prompt_and_the_closing_template_in_the_rows():
    enc = swap.EncoderLayout("q", "q", LLM, 0, (0, 4), drop_prefix=True)
    chunks = [entries([1, 2, 5, 6, 9, 8])]
    roles = swap.row_roles(enc, [chunk_roles(chunks[0], LLM)])
    assert roles == [[SEM, SEM, EOS, EOS]] and [e[0] for e in swap.row_entries(enc, chunks)] == [5, 6, 9, 8]


def test_tables_group_encoders_with_the_same_plan():
    a, b = _sd3_pair()
    _, _, plans = swap.compose_all(SD3, a, b, cmp.LAYOUT_PROMPT, SOURCES, True, 0, {"l", "g", "t5xxl"})
    text, groups = swap.tables(SD3, plans, a, b, 0, "EOSSwapConditioning")
    assert [g["names"] for g in groups] == [["clip_l", "clip_g"], ["t5xxl"]]
    assert groups[1]["rows"][2] == [2, "#101", "[EOS]", "B 1"] and groups[1]["rows"][3][2:] == ["pad (as [EOS])", "B 2"]
    assert "EOSSwapConditioning - clip_l, clip_g" in text
