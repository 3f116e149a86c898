"""Tier 1: attention probabilities, aggregation, metrics and heatmaps on seeded CPU tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from shapefirst import attention as A
from shapefirst import families, heatmaps, metrics
from shapefirst.tokens import EOS, SEM, SOS


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _reference_probs(q, k, heads):
    """Per-head softmax(q k^T / sqrt(d)) in float64 with an explicit loop, averaged over heads."""
    b, n, inner = q.shape
    d = inner // heads
    out = torch.zeros(b, n, k.shape[1], dtype=torch.float64)
    for h in range(heads):
        qh = q[..., h * d:(h + 1) * d].double()
        kh = k[..., h * d:(h + 1) * d].double()
        out += torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(d), dim=-1)
    return out / heads


@pytest.mark.parametrize("chunk", [A.CHUNK_ELEMENTS, 7 * 5 * 3])
def test_head_mean_probs_is_the_softmax_of_q_k_averaged_over_heads(chunk):
    g = _gen(1)
    q, k = torch.randn(2, 37, 5 * 8, generator=g), torch.randn(2, 11, 5 * 8, generator=g)
    p = A.head_mean_probs(q, k, heads=5, chunk_elements=chunk)
    assert p.shape == (2, 37, 11) and p.dtype == torch.float32
    assert torch.allclose(p.double(), _reference_probs(q, k, 5), atol=1e-6)
    assert torch.allclose(p.sum(-1), torch.ones(2, 37), atol=1e-6)


def test_head_mean_probs_accepts_the_head_first_layout_and_fp16():
    g = _gen(2)
    q, k = torch.randn(1, 20, 4 * 16, generator=g), torch.randn(1, 9, 4 * 16, generator=g)
    ref = A.head_mean_probs(q, k, 4)
    qh = q.reshape(1, 20, 4, 16).transpose(1, 2)
    kh = k.reshape(1, 9, 4, 16).transpose(1, 2)
    assert torch.allclose(A.head_mean_probs(qh, kh, 4, skip_reshape=True), ref, atol=1e-6)
    half = A.head_mean_probs(q.half(), k.half(), 4)
    assert half.dtype == torch.float32 and torch.allclose(half, ref, atol=2e-3)


def test_additive_and_boolean_masks_remove_keys():
    g = _gen(3)
    q, k = torch.randn(2, 6, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    additive = torch.zeros(6, 5)
    additive[:, 3:] = -float("inf")
    p = A.head_mean_probs(q, k, 2, mask=additive)
    assert torch.all(p[..., 3:] == 0)
    assert torch.allclose(p[..., :3], A.head_mean_probs(q, k[:, :3], 2), atol=1e-6)
    keep = torch.tensor([[True] * 3 + [False] * 2] * 2)
    assert torch.allclose(A.head_mean_probs(q, k, 2, mask=keep), p, atol=1e-6)


def test_joint_text_probs_honour_a_key_mask_over_the_joint_sequence():
    """Qwen-Image's mask (ComfyUI 0.33): (B, 1, text + image) additive, -max on padded text tokens.
    The padded tokens get probability 0 and the rest equals the softmax over the kept text keys."""
    g = _gen(4)
    text, image, heads, d = 5, 6, 2, 8
    q = torch.randn(2, heads, text + image, d, generator=g)
    k = torch.randn(2, heads, text + image, d, generator=g)
    mask = torch.zeros(2, 1, text + image)
    mask[1, 0, 3:text] = -torch.finfo(torch.float32).max  # the second prompt: its last two text tokens padded
    p = A.joint_text_probs(q, k, heads, (0, text), (text, image), skip_reshape=True, mask=mask)
    assert p.shape == (2, image, text) and torch.all(p[1, :, 3:] == 0)
    scores = q[:, :, text:].double() @ k[:, :, :text].double().transpose(-1, -2) / math.sqrt(d)
    want0 = scores[0].softmax(-1).mean(0)
    want1 = scores[1, :, :, :3].softmax(-1).mean(0)
    assert torch.allclose(p[0].double(), want0, atol=1e-6) and torch.allclose(p[1, :, :3].double(), want1, atol=1e-6)
    assert torch.allclose(p.sum(-1), torch.ones(2, image), atol=1e-6)


@pytest.mark.parametrize("order", [families.TEXT_FIRST, families.IMAGE_FIRST])
def test_joint_text_probs_read_the_parts_where_the_layout_puts_them(order):
    """[text; image] (SD3, Flux) and [image; text] (HunyuanVideo): the same image-query x text-key block
    whichever comes first, against a softmax over the text keys written out here."""
    g = _gen(5)
    text, image, extra, heads, d = 4, 6, 3, 2, 8
    q_txt, q_img = torch.randn(1, text, heads * d, generator=g), torch.randn(1, image, heads * d, generator=g)
    k_txt, k_img = torch.randn(1, text, heads * d, generator=g), torch.randn(1, image, heads * d, generator=g)
    tail = torch.randn(1, extra, heads * d, generator=g)  # more tokens after both parts
    parts = {"text": (q_txt, k_txt), "image": (q_img, k_img)}
    q = torch.cat([parts[order[0]][0], parts[order[1]][0], tail], dim=1)
    k = torch.cat([parts[order[0]][1], parts[order[1]][1], tail], dim=1)
    spans = families.JointLayout(order=order).spans(text, image)
    p = A.joint_text_probs(q, k, heads, *spans)
    qh = q_img.double().view(1, image, heads, d).transpose(1, 2)
    kh = k_txt.double().view(1, text, heads, d).transpose(1, 2)
    want = (qh @ kh.transpose(-1, -2) / math.sqrt(d)).softmax(-1).mean(1)
    assert p.shape == (1, image, text) and torch.allclose(p.double(), want, atol=1e-6)


def test_folding_repeated_keys_gives_the_unrepeated_probabilities():
    g = _gen(4)
    q, k = torch.randn(1, 10, 16, generator=g), torch.randn(1, 7, 16, generator=g)
    repeated = A.head_mean_probs(q, k.repeat(1, 3, 1), 2)  # what CONDCrossAttn.concat makes
    assert repeated.shape[-1] == 21
    assert torch.allclose(A.fold_repeats(repeated, 7), A.head_mean_probs(q, k, 2), atol=1e-6)
    assert A.fold_repeats(repeated, 21) is repeated
    with pytest.raises(ValueError, match="whole number of repeats"):
        A.fold_repeats(repeated, 8)


@pytest.mark.parametrize("size", [(4, 4), (16, 16), (5, 7), (8, 12)])
def test_resampling_keeps_each_pixel_a_distribution(size):
    maps = torch.softmax(torch.randn(2, 13, 8, 8, generator=_gen(5)), dim=1)
    out = A.resample(maps, size)
    assert out.shape == (2, 13, *size)
    assert torch.allclose(out.sum(1), torch.ones(2, *size), atol=1e-5)
    assert out.min() >= 0
    assert A.resample(maps, (8, 8)) is maps


def test_area_downsampling_averages_blocks():
    maps = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert A.resample(maps, (2, 2)).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


def test_layer_shapes_are_recovered_from_the_query_count():
    assert A.infer_hw(64 * 64, 64, 64) == (64, 64)
    assert A.infer_hw(32 * 48, 64, 96) == (32, 48)
    assert A.infer_hw(4 * 5, 13, 17) == (4, 5)  # odd sizes round up at each stride-2 step
    with pytest.raises(ValueError, match="do not tile"):
        A.infer_hw(77, 64, 64)


def test_the_grid_is_the_finest_layer_capped_at_max_side():
    assert A.grid_for([(8, 8), (32, 32), (16, 16)], 64) == (32, 32)
    assert A.grid_for([(64, 96), (32, 48)], 64) == (43, 64)
    assert A.grid_for([(4, 4)], 64) == (4, 4)


def test_accumulator_averages_layers_on_the_grid():
    g = _gen(6)
    fine = torch.softmax(torch.randn(1, 5, 8, 8, generator=g), dim=1)
    coarse = torch.softmax(torch.randn(1, 5, 4, 4, generator=g), dim=1)
    fine2 = torch.softmax(torch.randn(1, 5, 8, 8, generator=g), dim=1)
    acc = A.EvalAccumulator(keep_layers=True)
    for name, m in (("a", fine), ("b", coarse), ("c", fine2)):
        acc.add(A.COND, name, m)
    up = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    expected = (fine + up + fine2) / 3
    assert torch.allclose(acc.mean(A.COND, (8, 8)), expected, atol=1e-6)
    assert acc.names[A.COND] == ["a", "b", "c"]
    assert torch.equal(acc.layer_means(A.COND)["b"], coarse)


def test_run_store_keeps_all_token_means_but_only_max_tokens_maps():
    run = A.AttentionRun(sigmas=[3.0, 2.0, 1.0], planned_steps=[0, 2], latent_hw=(8, 8), batch=2, max_tokens=4)
    mean_map = torch.softmax(torch.randn(2, 10, 8, 8, generator=_gen(7)), dim=1)
    run.store(A.COND, 0, mean_map)
    assert run.maps[A.COND][0].shape == (2, 4, 8, 8) and run.maps[A.COND][0].dtype == torch.float16
    assert run.token_means[A.COND][0].shape == (2, 10)
    assert torch.allclose(run.token_means[A.COND][0].sum(-1), torch.ones(2), atol=1e-5)
    assert run.tokens_kept(A.COND) == 4 and run.token_count[A.COND] == 10
    assert run.nbytes() == 2 * 2 * 4 * 64 + 4 * 2 * 10
    assert run.stacked(A.COND, 1).shape == (1, 4, 8, 8)


def test_store_bytes_of_the_documented_sdxl_case():
    # SDXL 1024 px: finest cross-attention layer 64x64; 30 steps, 77 tokens, one image, cond only
    assert A.store_bytes(1, 1, 30, 77, (64, 64)) == 18_923_520


def test_planned_steps_always_include_the_last():
    assert A.planned_steps(10, 1) == list(range(10))
    assert A.planned_steps(10, 4) == [0, 4, 8, 9]
    assert A.planned_steps(9, 4) == [0, 4, 8]
    assert A.planned_steps(0, 3) == []


# -- metrics ----------------------------------------------------------------------------------

def test_class_shares_sum_the_class_tokens():
    means = torch.tensor([[0.9, 0.02, 0.03, 0.05], [0.8, 0.1, 0.04, 0.06]])
    shares = metrics.class_shares(means, [SOS, SEM, SEM, EOS])
    assert shares == {SOS: pytest.approx([0.9, 0.8]), SEM: pytest.approx([0.05, 0.14]), EOS: pytest.approx([0.05, 0.06])}
    with pytest.raises(ValueError):
        metrics.class_shares(means, [SOS, SEM])


def test_edge_f1_identical_is_one_disjoint_is_zero():
    a = torch.zeros(16, 16, dtype=torch.bool)
    a[4, 2:12] = True
    b = torch.zeros(16, 16, dtype=torch.bool)
    b[12, 2:12] = True
    assert metrics.edge_f1(a, a) == 1.0
    assert metrics.edge_f1(a, b) == 0.0
    assert metrics.edge_f1(a, b, tolerance=3) == 0.0
    shifted = torch.roll(a, 1, dims=0)
    assert metrics.edge_f1(a, shifted) == 0.0 and metrics.edge_f1(a, shifted, tolerance=1) == 1.0
    empty = torch.zeros_like(a)
    assert metrics.edge_f1(empty, empty) == 1.0 and metrics.edge_f1(a, empty) == 0.0
    half = a.clone()
    half[4, 7:12] = False  # 5 of 10 edge pixels: precision 1, recall 0.5
    assert metrics.edge_f1(half, a) == pytest.approx(2 * 0.5 / 1.5)


def _square_image(size=64, lo=16, hi=48):
    img = torch.zeros(size, size, 3)
    img[lo:hi, lo:hi] = 1.0
    return img


def test_canny_finds_the_outline_of_a_square():
    edges = metrics.canny_edges(_square_image()[..., 0][None])[0]
    assert edges.shape == (64, 64) and edges.any()
    assert not edges[30:34, 30:34].any()  # nothing inside the flat square
    assert edges[14:18, 20:44].any()  # its top side


def test_shape_convergence_of_a_map_with_the_images_shape_is_one():
    image = _square_image()
    square = image[..., 0]
    other = torch.zeros(64, 64)
    other[2:10, 50:62] = 1.0
    maps = torch.stack([torch.stack([other, square]), torch.stack([square, square])])  # (S=2, K=2)
    f1 = metrics.shape_convergence(image, maps, longest=64, tolerance=0)
    assert f1.shape == (2, 2)
    assert f1[1].tolist() == [1.0, 1.0]  # token 1 has the image's shape at both steps
    assert f1[0, 0] == 0.0 and f1[0, 1] == 1.0  # token 0 converges
    assert metrics.relative([0.2, 0.5, 0.5]) == [0.4, 1.0, 1.0]
    assert metrics.relative([0.3, 0.0]) == [None, None]


def test_kl_is_zero_for_identical_maps_and_matches_a_hand_computed_value():
    p = torch.softmax(torch.randn(3, 7, 4, 4, generator=_gen(8)), dim=1)
    assert metrics.kl_per_step(p, p.clone()) == [0.0, 0.0, 0.0]
    a = torch.tensor([0.5, 0.5]).reshape(1, 2, 1, 1).expand(1, 2, 2, 2)
    b = torch.tensor([0.9, 0.1]).reshape(1, 2, 1, 1).expand(1, 2, 2, 2)
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert metrics.kl_per_step(a, b, eps=0.0) == [pytest.approx(expected)]
    q = torch.softmax(torch.randn(3, 7, 4, 4, generator=_gen(9)), dim=1)
    assert all(v > 0 for v in metrics.kl_per_step(p, q))
    with pytest.raises(ValueError):
        metrics.kl_per_step(p, q[:2])


# -- heatmaps ---------------------------------------------------------------------------------

def test_colour_ramp_and_overlay_ranges():
    c = heatmaps.colorize(torch.tensor([0.0, 1.0]))
    assert c.shape == (2, 3) and c[0].sum() < 0.1 and c[1].sum() > 2.0
    out = heatmaps.overlay(torch.zeros(16, 16, 3), torch.rand(2, 4, 4, generator=_gen(10)))
    assert out.shape == (2, 16, 16, 3) and 0 <= out.min() and out.max() <= 1


def test_grid_has_one_cell_per_token_and_step():
    image = torch.rand(32, 48, 3, generator=_gen(11))
    maps = torch.rand(3, 4, 4, 6, generator=_gen(12))
    grid = heatmaps.token_step_grid(image, maps, ["a", "b", "c"], ["s0", "s1", "s2", "s3"], cell=48)
    # cells are 32x48 (the image's aspect at 48 px), plus the label column and header row
    assert grid.shape == (1, heatmaps.HEADER_H + 3 * (32 + heatmaps.GAP), heatmaps.LABEL_W + 4 * (48 + heatmaps.GAP), 3)
    with pytest.raises(ValueError):
        heatmaps.token_step_grid(image, maps, ["a"], ["s0"])


def test_sprite_lays_cells_out_row_by_row_normalised():
    maps = torch.zeros(2, 3, 4, 5)
    maps[1, 2, 0, 0] = 7.0
    s = heatmaps.sprite(maps)
    assert s.shape == (8, 15) and s.dtype.name == "uint8"
    assert s[4, 10] == 255 and s.sum() == 255


@pytest.mark.parametrize("skip_reshape", [False, True])
def test_take_frames_keeps_the_query_rows_of_the_chosen_frames(skip_reshape):
    g = _gen(5)
    frames, n, heads, d = 4, 6, 2, 3
    q = torch.randn(2, frames * n, heads * d, generator=g)  # rows ordered (frame, position)
    k = torch.randn(2, 9, heads * d, generator=g)
    kept = [0, 3]
    if skip_reshape:
        qs = q.reshape(2, frames * n, heads, d).transpose(1, 2)
        ks = k.reshape(2, 9, heads, d).transpose(1, 2)
        p = A.head_mean_probs(A.take_frames(qs, kept, frames, skip_reshape=True), ks, heads, skip_reshape=True)
    else:
        p = A.head_mean_probs(A.take_frames(q, kept, frames), k, heads)
    per_frame = A.frames_to_batch(p, len(kept))  # (2 videos x 2 frames, n, 9)
    full = _reference_probs(q, k, heads)
    for video in range(2):
        for j, f in enumerate(kept):
            want = full[video, f * n:(f + 1) * n]
            assert torch.allclose(per_frame[video * len(kept) + j].double(), want, atol=1e-6)
    assert A.take_frames(q, list(range(frames)), frames) is q  # every frame kept: no copy
    with pytest.raises(ValueError, match="not 5 frames"):
        A.take_frames(q, [0], 5)


def test_image_index_maps_a_kept_frame_to_the_decoded_frame_at_the_same_time():
    run = A.AttentionRun(sigmas=[1.0], planned_steps=[0], latent_hw=(8, 8), batch=2 * 3, max_tokens=4,
                         frames=[0, 4, 8], total_frames=9, videos=2)
    # Wan: 9 latent frames decode to 1 + 4 * 8 = 33 frames per video; latent frame f is decoded frame 4f
    assert [run.image_index(e, 66) for e in range(6)] == [0, 16, 32, 33, 49, 65]
    still = A.AttentionRun(sigmas=[1.0], planned_steps=[0], latent_hw=(8, 8), batch=3, max_tokens=4)
    assert [still.image_index(e, 3) for e in range(3)] == [0, 1, 2]  # images: the entry itself
