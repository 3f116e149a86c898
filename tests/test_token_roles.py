"""Tier 1: token roles and per-class composition on hand-written token lists and seeded tensors."""

from __future__ import annotations

import pytest
import torch

from shapefirst import compose as cmp
from shapefirst.tokens import (EOS, PAD, SEM, SOS, TokenizerInfo, TokenLayoutError, chunk_roles, flat_roles,
                               effective_role, format_table, prompt_roles, repeat_semantic, role_positions, token_labels,
                               token_text)

SD1 = TokenizerInfo(start=49406, end=49407, pad=49407, max_length=77)
SD2 = TokenizerInfo(start=49406, end=49407, pad=0, max_length=77)
T5 = TokenizerInfo(start=None, end=1, pad=0, max_length=None)


def clip_chunk(ids, info, length=77, first_word=1):
    """A chunk as ComfyUI's SDTokenizer writes it: start, words (word ids from first_word), end, padding."""
    chunk = [(info.start, 1.0, 0)] if info.start is not None else []
    chunk += [(t, 1.0, first_word + i) for i, t in enumerate(ids)]
    chunk.append((info.end, 1.0, 0))
    if length is not None:
        chunk += [(info.pad, 1.0, 0)] * (length - len(chunk))
    return chunk


def test_sd1_chunk_pads_with_the_end_token_but_only_the_first_is_eos():
    roles = chunk_roles(clip_chunk([320, 1746, 3329], SD1), SD1)
    assert roles[:5] == [SOS, SEM, SEM, SEM, EOS]
    assert roles[5:] == [PAD] * 72 and len(roles) == 77


def test_sd2_pads_with_token_0_and_a_word_that_is_token_0_stays_semantic():
    chunk = clip_chunk([320, 0, 3329], SD2)  # token 0 is "!" in CLIP's vocabulary
    roles = chunk_roles(chunk, SD2)
    assert roles[:5] == [SOS, SEM, SEM, SEM, EOS] and set(roles[5:]) == {PAD}
    assert chunk[6][0] == 0 and chunk[2][0] == 0  # same id, different roles: the word id decides


def test_t5_has_no_sos_and_embeddings_count_as_semantic():
    emb = torch.ones(4096)
    chunk = [(71, 1.0, 1), (emb, 1.0, 2), (1712, 1.0, 3), (1, 1.0, 0), (0, 1.0, 0)]
    assert chunk_roles(chunk, T5) == [SEM, SEM, SEM, EOS, PAD]



def test_paper_classes_fold_padding_into_eos_and_a_full_chunk_has_no_eos():
    chunk = clip_chunk([320, 1929], SD1, length=6)
    assert [effective_role(r, True) for r in chunk_roles(chunk, SD1)] == [SOS, SEM, SEM, EOS, EOS, EOS]
    # a prompt that fills its chunk has no end token; a word equal to the pad id stays semantic
    assert chunk_roles([(49406, 1.0, 0), (0, 1.0, 1), (5, 1.0, 2)], SD2) == [SOS, SEM, SEM]


def test_labels_of_a_multi_chunk_prompt():
    chunks = [clip_chunk([320], SD1, length=4), clip_chunk([1929], SD1, length=3, first_word=2)]
    roles = flat_roles(prompt_roles(chunks, SD1))
    assert roles == [SOS, SEM, EOS, PAD, SOS, SEM, EOS]
    inv = {49406: "<|startoftext|>", 49407: "<|endoftext|>", 320: "a</w>", 1929: "square</w>"}
    assert token_labels(chunks, inv, roles) == ["[SOS]", "a", "[EOS]", "[PAD]", "[SOS]", "square", "[EOS]"]
    assert token_labels([[("emb", 1.0, 1)]], inv, [SEM]) == ["<embedding>"]


def test_word_ids_are_required():
    with pytest.raises(ValueError, match="return_word_ids"):
        chunk_roles([(49406, 1.0), (49407, 1.0)], SD1)


def test_role_positions_fold_padding_into_eos_only_when_asked():
    roles = chunk_roles(clip_chunk([1, 2], SD1, length=8), SD1)
    assert role_positions(roles, True) == {SOS: [0], SEM: [1, 2], EOS: [3, 4, 5, 6, 7], PAD: []}
    assert role_positions(roles, False) == {SOS: [0], SEM: [1, 2], EOS: [3], PAD: [4, 5, 6, 7]}


def test_repeat_semantic_keeps_length_and_leaves_fewer_eos_slots():
    chunk = clip_chunk([11, 12, 13], SD1)
    out = repeat_semantic([chunk], 4, SD1)[0]
    assert len(out) == 77
    assert [t for t, _, _ in out[1:13]] == [11, 12, 13] * 4
    assert chunk_roles(out, SD1).count(SEM) == 12 and out[13][0] == 49407
    assert role_positions(chunk_roles(out, SD1))[EOS] == list(range(13, 77))
    assert repeat_semantic([chunk], 1, SD1) == [[tuple(e) for e in chunk]]


def test_repeat_semantic_refuses_when_no_eos_slot_remains():
    chunk = clip_chunk(list(range(100, 125)), SD1)  # 25 words: 3 copies = 75 fit, 4 do not
    assert len(repeat_semantic([chunk], 3, SD1)[0]) == 77
    with pytest.raises(TokenLayoutError, match="25 semantic tokens; 4 copies need 102 of its 77"):
        repeat_semantic([chunk], 4, SD1)


def test_repeat_semantic_on_an_unbounded_t5_chunk_grows_and_keeps_padding():
    chunk = [(71, 1.0, 1), (72, 1.0, 2), (1, 1.0, 0), (0, 1.0, 0)]
    out = repeat_semantic([chunk], 3, T5)[0]
    assert [t for t, _, _ in out] == [71, 72] * 3 + [1, 0]


# -- plans: which row fills each position --------------------------------------------------

def _layout(*chunks, info=SD1):
    roles = prompt_roles(chunks, info)
    return roles, cmp.PromptLayout.of(roles)


def test_a_in_its_own_layout_is_the_identity():
    roles, a = _layout(clip_chunk([5, 6, 7], SD1), clip_chunk([8], SD1))
    plan = cmp.plan_rows(roles, {"A": a, "B": a}, {SOS: "A", SEM: "A", EOS: "A"}, True)
    assert [r.index for r in plan] == list(range(154)) and {r.kind for r in plan} == {"A"}


def test_eos_from_b_fills_in_order_and_repeats_b_last_row():
    roles_a, a = _layout(clip_chunk([5, 6], SD1, length=10))  # EOS region: positions 3..9 (7 rows)
    _, b = _layout(clip_chunk([1, 2, 3, 4, 5, 6], SD1, length=10))  # EOS region: 7..9 (3 rows)
    plan = cmp.plan_rows(roles_a, {"A": a, "B": b}, {SOS: "A", SEM: "A", EOS: "B"}, True)
    assert [(r.kind, r.index) for r in plan] == [("A", 0), ("A", 1), ("A", 2)] + [("B", 7), ("B", 8)] + [("B", 9)] * 5
    # padding kept from A: only the first [EOS] is swapped
    plan = cmp.plan_rows(roles_a, {"A": a, "B": b}, {SOS: "A", SEM: "A", EOS: "B"}, False)
    assert [(r.kind, r.index) for r in plan[3:]] == [("B", 7)] + [("A", i) for i in range(4, 10)]
    assert [r.slot for r in plan[3:5]] == [EOS, PAD]


def test_long_prompts_pair_chunks_and_clamp_to_b_last_chunk():
    roles_a, a = _layout(clip_chunk(range(10, 85), SD1), clip_chunk([5], SD1), clip_chunk([6, 7], SD1))
    _, b = _layout(clip_chunk(range(10, 85), SD1), clip_chunk([1, 2, 3], SD1))
    plan = cmp.plan_rows(roles_a, {"A": a, "B": b}, {SOS: "A", SEM: "A", EOS: "B"}, True)
    assert (plan[76].kind, plan[76].index) == ("B", 76)  # chunk 0: B's chunk 0 has one [EOS], at 76
    assert [r.index for r in plan[77 + 2:77 + 6]] == [77 + 4, 77 + 5, 77 + 6, 77 + 7]  # chunk 1 <- B chunk 1
    assert [r.index for r in plan[154 + 3:154 + 6]] == [77 + 4, 77 + 5, 77 + 6]  # chunk 2 <- B's last chunk
    assert all(r.kind == "A" and r.index == i for i, r in enumerate(plan) if r.role != EOS)


def test_semantic_rows_from_b_and_missing_classes():
    roles_a, a = _layout(clip_chunk([5, 6, 7], SD1, length=8))
    _, b = _layout(clip_chunk([1, 2], SD1, length=8))
    plan = cmp.plan_rows(roles_a, {"A": a, "B": b}, {SOS: "B", SEM: "B", EOS: "A"}, True)
    assert [(r.kind, r.index) for r in plan[:4]] == [("B", 0), ("B", 1), ("B", 2), ("B", 2)]
    _, empty = _layout(clip_chunk([], SD1, length=8))
    with pytest.raises(cmp.MissingClassError, match="prompt B has no SEM"):
        cmp.plan_rows(roles_a, {"A": a, "B": empty}, {SOS: "A", SEM: "B", EOS: "A"}, True)


def test_synthetic_layouts_of_appendix_e():
    roles_a, a = _layout(clip_chunk([5, 6], SD1))
    sos = cmp.plan_rows(cmp.synthetic_layout(cmp.LAYOUT_SOS_ONLY, 77), {"A": a, "B": a},
                        {SOS: "A", SEM: "A", EOS: "A"}, True)
    assert len(sos) == 77 and all(r.index == 0 for r in sos)
    eos = cmp.plan_rows(cmp.synthetic_layout(cmp.LAYOUT_SOS_EOS, 77), {"A": a, "B": a},
                        {SOS: "A", SEM: "A", EOS: "A"}, True)
    assert eos[0].index == 0 and [r.index for r in eos[1:]] == list(range(3, 77)) + [76, 76]
    first_only = cmp.plan_rows(cmp.synthetic_layout(cmp.LAYOUT_SOS_EOS, 77), {"A": a, "B": a},
                               {SOS: "A", SEM: "A", EOS: "A"}, False)
    assert [r.index for r in first_only[1:]] == [3] * 76  # 76 copies of the [EOS] itself


def test_encoded_length_limits_regions():
    roles, _ = _layout(clip_chunk([5], SD1, length=10))
    cut = cmp.PromptLayout.of(roles, length=6)
    assert cut.region(0, EOS, True) == [2, 3, 4, 5]


# -- compose: rows, zeros, noise -----------------------------------------------------------

def _rows(seed, n=12, c=16):
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed)) * 3 + 1


def test_compose_copies_rows_and_zeros_exactly():
    roles_a, a = _layout(clip_chunk([5, 6, 7], SD1, length=12))
    _, b = _layout(clip_chunk([1], SD1, length=12))
    ra, rb = _rows(0), _rows(1)
    plan = cmp.plan_rows(roles_a, {"A": a, "B": b}, {SOS: "A", SEM: "zeros", EOS: "B"}, True)
    out = cmp.compose(plan, {"A": ra, "B": rb})
    assert torch.equal(out[0], ra[0]) and torch.equal(out[1:4], torch.zeros(3, 16))
    assert torch.equal(out[4:], rb[2:10]) and out.dtype == ra.dtype  # B region is longer: first 8 rows


def test_compose_preserves_dtype():
    roles_a, a = _layout(clip_chunk([5], SD1, length=6))
    ra = _rows(0, 6).half()
    out = cmp.compose(cmp.plan_rows(roles_a, {"A": a, "B": a}, {SOS: "A", SEM: "A", EOS: "A"}), {"A": ra, "B": ra})
    assert out.dtype == torch.float16 and torch.equal(out, ra)


def test_noise_matches_the_reference_statistics_and_is_seeded():
    ref = torch.randn(4000, 8, generator=torch.Generator().manual_seed(3)) * torch.arange(1, 9) + torch.arange(8) * 10
    n1 = cmp.noise_rows(ref, 4000, torch.Generator().manual_seed(5))
    n2 = cmp.noise_rows(ref, 4000, torch.Generator().manual_seed(5))
    n3 = cmp.noise_rows(ref, 4000, torch.Generator().manual_seed(6))
    assert torch.equal(n1, n2) and not torch.equal(n1, n3)
    assert torch.allclose(n1.mean(0), ref.mean(0), atol=0.15 * ref.std(0).max().item())
    assert torch.allclose(n1.std(0), ref.std(0), rtol=0.06)


def test_compose_needs_noise_when_the_plan_asks():
    roles_a, a = _layout(clip_chunk([5], SD1, length=6))
    plan = cmp.plan_rows(roles_a, {"A": a, "B": a}, {SOS: "A", SEM: "noise", EOS: "A"})
    with pytest.raises(ValueError, match="noise"):
        cmp.compose(plan, {"A": _rows(0, 6), "B": _rows(0, 6)})
    noise = _rows(9, 6)
    out = cmp.compose(plan, {"A": _rows(0, 6), "B": _rows(0, 6)}, noise)
    assert torch.equal(out[1], noise[1]) and torch.equal(out[2:], _rows(0, 6)[2:])


def test_token_text_and_table():
    assert token_text(320, {320: "a</w>"}) == "a" and token_text(torch.ones(3), {}) == "<embedding>"
    assert token_text(7, {}) == "#7" and token_text(8, {8: "\u2581cat"}) == "cat"
    assert token_text(9, {9: "\u0120blue"}) == "blue"  # byte-level BPE (Qwen)
    assert token_text(198, {198: "\u010a"}) == "\u010a"  # a bare newline stays visible
    text = format_table([{"pos": 0, "token": "<b>", "role": "[SOS]", "source": "A 0"}], "title")
    assert text.splitlines() == ["title", "pos  token  role   source", "0    <b>    [SOS]  A 0"]
