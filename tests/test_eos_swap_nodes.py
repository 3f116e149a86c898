"""Tier 2: EOSSwapConditioning inside a real ComfyUI, with real tokenizers and random-weight encoders.

Every expected row is rebuilt here from core CLIPTextEncode outputs and the real tokenizer's ids
(first end token of each chunk), never from the pack's own code.
"""

from __future__ import annotations

import pytest
import torch

from eos_reference import BIRD, CHAIR, END, LONG, OPTS, SKYLINE, reference_swap
from devtools.harness import GraphError

pytestmark = pytest.mark.comfy


def swap_graph(ckpt, a, b, **opts):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": a, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": b, "clip": ["1", 1]}},
        "5": {"class_type": "EOSSwapConditioning",
              "inputs": {"clip": ["1", 1], "prompt_a": a, "prompt_b": b, **OPTS, **opts}},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["5", 1]}},
    }


class Swap:
    """The node's output next to core CLIPTextEncode of A and B, and the tokenizer's ids."""

    def __init__(self, comfy, ckpt, a, b, **opts):
        # the cache keeps the loaded checkpoint between graphs (only changed nodes run again)
        self.r = comfy.run(swap_graph(ckpt, a, b, **opts), outputs=["2", "3"], fresh_cache=False)
        self.conditioning = self.r.output_value("5", 0)
        self.cond, self.extras = self.conditioning[0]
        self.a, self.a_extras = self.r.output_value("2", 0)[0]
        self.b, self.b_extras = self.r.output_value("3", 0)[0]
        self.clip = self.r.output_value("1", 1)
        self.ids_a = self.ids(a)
        self.ids_b = self.ids(b)
        self.table = self.r.output_value("5", 1)

    def ids(self, text, key=None):
        tokens = self.clip.tokenize(text)
        return [[int(t) for t, _ in chunk] for chunk in tokens[key or next(iter(tokens))]]


@pytest.mark.parametrize("a,b", [(BIRD, CHAIR), (CHAIR, SKYLINE), (SKYLINE, BIRD),
                                 ("a (blue:1.4) bird, (feathers:0.7)", "(a brown:1.2) chair")])
def test_sd15_rows_are_a_then_b_eos_position_by_position(comfy, sd15_ckpt, a, b):
    s = Swap(comfy, sd15_ckpt, a, b)
    assert s.cond.shape == s.a.shape == (1, 77, 768)
    want = reference_swap(s.a, s.b, s.ids_a, s.ids_b)
    assert torch.equal(s.cond, want)
    n_sem = s.ids_a[0].index(END)
    assert torch.equal(s.cond[:, :n_sem], s.a[:, :n_sem])  # [SOS] + A's semantic rows, untouched
    assert not torch.equal(s.cond[:, n_sem:], s.a[:, n_sem:])
    assert len(s.conditioning) == 1 and "shapefirst.eos_swap.values_context" not in s.extras


def test_shorter_b_region_repeats_b_last_row(comfy, sd15_ckpt):
    s = Swap(comfy, sd15_ckpt, BIRD, SKYLINE)
    ea, eb = s.ids_a[0].index(END), s.ids_b[0].index(END)
    region_b = 77 - eb
    assert region_b < 77 - ea
    assert torch.equal(s.cond[0, ea:ea + region_b], s.b[0, eb:])
    assert all(torch.equal(s.cond[0, p], s.b[0, 76]) for p in range(ea + region_b, 77))


def test_long_prompts_pair_chunks_with_b_and_clamp(comfy, sd15_ckpt):
    s = Swap(comfy, sd15_ckpt, LONG, SKYLINE)
    assert len(s.ids_a) >= 2 and len(s.ids_b) == 1 and s.cond.shape == s.a.shape
    assert torch.equal(s.cond, reference_swap(s.a, s.b, s.ids_a, s.ids_b))
    r = Swap(comfy, sd15_ckpt, BIRD, LONG)  # B long: A's single chunk takes B's first chunk
    assert torch.equal(r.cond, reference_swap(r.a, r.b, r.ids_a, r.ids_b))
    both = Swap(comfy, sd15_ckpt, LONG, LONG + ", blue sky")
    assert torch.equal(both.cond, reference_swap(both.a, both.b, both.ids_a, both.ids_b))


def test_sd2_pads_with_zero_and_padding_can_stay_with_a(comfy, sd2x_ckpt):
    s = Swap(comfy, sd2x_ckpt, BIRD, CHAIR)
    assert s.ids_a[0][s.ids_a[0].index(END) + 1:] == [0] * (76 - s.ids_a[0].index(END))  # really pad 0
    assert torch.equal(s.cond, reference_swap(s.a, s.b, s.ids_a, s.ids_b))
    kept = Swap(comfy, sd2x_ckpt, BIRD, CHAIR, padding_is_eos=False)
    want = reference_swap(kept.a, kept.b, kept.ids_a, kept.ids_b, padding_is_eos=False)
    assert torch.equal(kept.cond, want)
    ea = kept.ids_a[0].index(END)
    assert torch.equal(kept.cond[0, ea + 1:], kept.a[0, ea + 1:]) and torch.equal(kept.cond[0, ea], kept.b[0, ea])
    assert "pad" in kept.table and "[EOS]" in kept.table


def test_sdxl_swaps_both_encoders_and_the_pooled_output_follows_the_switch(comfy, sdxl_ckpt):
    s = Swap(comfy, sdxl_ckpt, BIRD, SKYLINE)
    assert s.cond.shape == (1, 77, 2048)
    for key, channels in (("l", slice(0, 768)), ("g", slice(768, 2048))):
        ids_a, ids_b = s.ids(BIRD, key), s.ids(SKYLINE, key)
        assert torch.equal(s.cond[..., channels], reference_swap(s.a, s.b, ids_a, ids_b)[..., channels]), key
    assert s.ids(BIRD, "g")[0][-1] == 0 and s.ids(BIRD, "l")[0][-1] == END  # clip_g pads with 0, clip_l with [EOS]
    assert torch.equal(s.extras["pooled_output"], s.b_extras["pooled_output"])
    graph = swap_graph(sdxl_ckpt, BIRD, SKYLINE, pooled_from="A")
    pooled_a = comfy.run(graph, outputs=["2"], fresh_cache=False).output_value("5", 0)[0][1]["pooled_output"]
    assert torch.equal(pooled_a, s.a_extras["pooled_output"])
    assert not torch.equal(pooled_a, s.extras["pooled_output"])


def test_textual_inversion_embeddings_in_the_prompt_behave_as_in_clip_text_encode(comfy, sd15_ckpt, tmp_path):
    import folder_paths
    import safetensors.torch

    vectors = torch.randn(2, 768, generator=torch.Generator().manual_seed(4))
    safetensors.torch.save_file({"clip_l": vectors}, str(tmp_path / "shapefirst_test_emb.safetensors"))
    folder_paths.add_model_folder_path("embeddings", str(tmp_path))
    a = "a embedding:shapefirst_test_emb bird"
    r = comfy.run(swap_graph(sd15_ckpt, a, CHAIR), outputs=["2", "3"])  # fresh: the loader reads the folder
    clip = r.output_value("1", 1)
    chunk = clip.tokenize(a)["l"][0]
    assert [torch.is_tensor(t) for t, _ in chunk[:5]] == [False, False, True, True, False]  # 2 vectors inserted
    ids_a = [[-1 if torch.is_tensor(t) else int(t) for t, _ in chunk]]
    ids_b = [[int(t) for t, _ in c] for c in clip.tokenize(CHAIR)["l"]]
    cond, enc_a, enc_b = r.output_value("5", 0)[0][0], r.output_value("2", 0)[0][0], r.output_value("3", 0)[0][0]
    assert torch.equal(cond, reference_swap(enc_a, enc_b, ids_a, ids_b))
    assert torch.equal(cond[0, :5], enc_a[0, :5])  # [SOS] a <emb> <emb> bird: A's rows, embeddings included
    assert "<embedding>" in r.output_value("5", 1)


# -- per-class compositions (Appendices C, E, F) --------------------------------------------

def test_zero_and_noise_variants_have_the_rows_and_statistics_claimed(comfy, sd15_ckpt):
    sem_zero = Swap(comfy, sd15_ckpt, SKYLINE, CHAIR, eos_from="zeros")  # Sem + Zero
    ea = sem_zero.ids_a[0].index(END)
    assert torch.equal(sem_zero.cond[0, :ea], sem_zero.a[0, :ea])
    assert torch.equal(sem_zero.cond[0, ea:], torch.zeros(77 - ea, 768))
    zero_eos = Swap(comfy, sd15_ckpt, SKYLINE, CHAIR, sem_from="zeros", eos_from="A")  # Zero + EOS
    assert torch.equal(zero_eos.cond[0, 1:ea], torch.zeros(ea - 1, 768))
    assert torch.equal(zero_eos.cond[0, ea:], zero_eos.a[0, ea:]) and torch.equal(zero_eos.cond[0, 0], zero_eos.a[0, 0])

    rand_eos = Swap(comfy, sd15_ckpt, SKYLINE, CHAIR, sem_from="noise", eos_from="A", noise_seed=11)  # Rand + EOS
    sem_rand = Swap(comfy, sd15_ckpt, SKYLINE, CHAIR, eos_from="noise", noise_seed=11)  # Sem + Rand
    assert torch.equal(rand_eos.cond[0, ea:], rand_eos.a[0, ea:])
    assert torch.equal(sem_rand.cond[0, :ea], sem_rand.a[0, :ea])
    reference = sem_rand.a[0, 1:]  # A's rows without [SOS]
    mean, std = reference.mean(0), reference.std(0, unbiased=False)
    noise = torch.cat([rand_eos.cond[0, 1:ea], sem_rand.cond[0, ea:]])
    z = (noise - mean) / std
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1.0) < 0.02  # 76 x 768 standardised samples
    again = Swap(comfy, sd15_ckpt, SKYLINE, CHAIR, eos_from="noise", noise_seed=11)
    other = Swap(comfy, sd15_ckpt, SKYLINE, CHAIR, eos_from="noise", noise_seed=12)
    assert torch.equal(again.cond, sem_rand.cond) and not torch.equal(other.cond, sem_rand.cond)


def test_sem_repeats_reencode_a_with_fewer_eos_slots(comfy, sd15_ckpt):
    s = Swap(comfy, sd15_ckpt, BIRD, CHAIR, sem_repeats=3)
    repeated = comfy.run(swap_graph(sd15_ckpt, " ".join([BIRD] * 3), CHAIR), outputs=["2"],
                         fresh_cache=False).output_value("2", 0)[0][0]
    n = 1 + 3 * 3  # [SOS] + 3 x "a blue bird"
    assert torch.equal(s.cond[:, :n], repeated[:, :n])  # the repeated prompt, encoded by CLIP
    eb = s.ids_b[0].index(END)
    assert torch.equal(s.cond[0, n:], torch.cat([s.b[0, eb:eb + 77 - n]]))
    with pytest.raises(GraphError, match=r"EOSSwapConditioning: prompt A leaves no \[EOS\] slot with sem_repeats = 30.*"
                                         r"Lower sem_repeats"):
        comfy.run(swap_graph(sd15_ckpt, BIRD, CHAIR, sem_repeats=30))


def test_appendix_e_sos_only_and_sos_plus_eos_layouts(comfy, sd15_ckpt):
    sos = Swap(comfy, sd15_ckpt, BIRD, CHAIR, layout="77 x [SOS]", pooled_from="A")
    assert sos.cond.shape == (1, 77, 768)
    assert all(torch.equal(sos.cond[0, p], sos.a[0, 0]) for p in range(77))
    eos = Swap(comfy, sd15_ckpt, BIRD, CHAIR, layout="[SOS] + 76 x [EOS]", eos_from="A", pooled_from="A")
    ea = eos.ids_a[0].index(END)
    assert torch.equal(eos.cond[0, 0], eos.a[0, 0])
    assert torch.equal(eos.cond[0, 1:1 + 77 - ea], eos.a[0, ea:])  # A's [EOS] region in order...
    assert all(torch.equal(eos.cond[0, p], eos.a[0, 76]) for p in range(1 + 77 - ea, 77))  # ...then its last row
    copies = Swap(comfy, sd15_ckpt, BIRD, CHAIR, layout="[SOS] + 76 x [EOS]", eos_from="B", padding_is_eos=False)
    eb = copies.ids_b[0].index(END)
    assert all(torch.equal(copies.cond[0, p], copies.b[0, eb]) for p in range(1, 77))  # 76 copies of B's [EOS]


def test_token_table_output_and_ui(comfy, sd15_ckpt):
    s = Swap(comfy, sd15_ckpt, "a <b>cat</b>", CHAIR)
    lines = s.table.splitlines()
    assert lines[0].startswith("SD1.x: SOS<-A, SEM<-A, EOS<-B; layout prompt A")
    header = lines.index("EOSSwapConditioning - clip_l") + 1
    assert lines[header].split() == ["pos", "token", "role", "source"]
    assert lines[header + 1].split() == ["0", "<|startoftext|>", "[SOS]", "A", "0"]
    assert any(line.split()[:3] == ["1", "a", "SEM"] for line in lines)
    ui = s.r.ui["5"]["shapefirst_tokens"][0]
    rows = ui["encoders"][0]["rows"]
    assert ui["encoders"][0]["names"] == ["clip_l"] and len(rows) == 77
    ea = s.ids_a[0].index(END)
    assert rows[ea][2] == "[EOS]" and rows[ea][3] == f"B {s.ids_b[0].index(END)}"
    assert rows[ea + 1][2] == "pad (as [EOS])"
    assert any("<" in r[1] for r in rows[1:ea])  # prompt text arrives as data; the JS shows it as text


# -- step window ----------------------------------------------------------------------------

def test_window_adds_a_for_the_rest_like_core_timestep_ranges(comfy, sd15_ckpt):
    s = Swap(comfy, sd15_ckpt, BIRD, CHAIR, start_percent=0.1, end_percent=0.4)
    (c0, d0), (c1, d1), (c2, d2) = s.conditioning
    assert torch.equal(c0, reference_swap(s.a, s.b, s.ids_a, s.ids_b))
    assert (d0["start_percent"], d0["end_percent"]) == (0.1, 0.4)
    assert torch.equal(c1, s.a) and (d1["start_percent"], d1["end_percent"]) == (0.0, 0.1)
    assert torch.equal(c2, s.a) and (d2["start_percent"], d2["end_percent"]) == (0.4, 1.0)
    assert "start_percent" not in s.a_extras  # core's output is not modified


def _record_cond_contexts(model):
    """A clone that records, at the middle block's cross-attention, sigma and the cond contexts."""
    seen = []

    def patch(n, context, value, extra_options):
        if extra_options.get("block") == ("middle", 0):
            per = context.shape[0] // len(extra_options["cond_or_uncond"])
            conds = [context[i * per:i * per + 1].clone() for i, c in enumerate(extra_options["cond_or_uncond"]) if c == 0]
            seen.append((float(extra_options["sigmas"][0]), conds))
        return n, context, value

    m = model.clone()
    m.set_model_attn2_patch(patch)
    return m, seen


@pytest.mark.parametrize("sampler,scheduler,end", [("euler", "normal", 0.3), ("heun", "karras", 0.5),
                                                   ("dpmpp_2m", "exponential", 0.2), ("ddim", "ddim_uniform", 0.6),
                                                   ("uni_pc", "sgm_uniform", 0.45)])
def test_window_switches_at_the_right_step(comfy, sd15_ckpt, sampler, scheduler, end):
    import comfy.samplers as samplers
    import nodes

    s = Swap(comfy, sd15_ckpt, BIRD, CHAIR, end_percent=end)
    swapped = s.conditioning[0][0]
    model = s.r.output_value("1", 0)
    recorder, seen = _record_cond_contexts(model)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    steps = 6
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        nodes.common_ksampler(recorder, 3, steps, 5.0, sampler, scheduler, s.conditioning, s.r.output_value("3", 0),
                              latent)
    boundary = model.get_model_object("model_sampling").percent_to_sigma(end)
    sigmas = samplers.KSampler(model, steps, "cpu", sampler, scheduler).sigmas.tolist()  # the schedule sampled
    assert seen
    for sigma, conds in seen:
        assert len(conds) == 1, f"sigma {sigma}: {len(conds)} cond chunks"
        want = swapped if sigma >= boundary else s.a
        assert torch.equal(conds[0], want.to(conds[0].dtype)), f"sigma {sigma} boundary {boundary}"
    # the step at which the first evaluation of each step stops seeing the swap
    first_eval = [next(c for sg, c in seen if abs(sg - sigma) <= 1e-4 * max(1.0, sigma)) for sigma in sigmas[:-1]]
    used_swap = [torch.equal(c[0], swapped) for c in first_eval]
    n = len(sigmas) - 1
    switch = next((i for i, sg in enumerate(sigmas[:-1]) if sg < boundary), n)
    assert used_swap == [i < switch for i in range(n)]
    assert 0 < switch < n


# -- bad input: a clear error naming the node and the fix ----------------------------------

@pytest.mark.parametrize("a,b,opts,message", [
    ("", CHAIR, {}, r"EOSSwapConditioning: prompt A is empty: .* Type a source prompt"),
    (BIRD, "  ", {}, r"EOSSwapConditioning: prompt B is empty but the \[EOS\] come from it. Type prompt B"),
    (BIRD, "", {"sem_from": "B", "eos_from": "A"}, r"prompt B is empty but the semantic tokens come from it"),
    (SKYLINE, CHAIR, {"sem_repeats": 4}, r"prompt A leaves no \[EOS\] slot with sem_repeats = 4: chunk 0 has 2\d "
                                         r"semantic tokens; 4 copies need \d+ of its 77 positions. Lower sem_repeats"),
])
def test_bad_prompts_name_the_node_and_the_fix(comfy, sd15_ckpt, a, b, opts, message):
    with pytest.raises(GraphError, match=message):
        comfy.run(swap_graph(sd15_ckpt, a, b, **opts), fresh_cache=False)


def test_an_empty_b_is_fine_where_nothing_comes_from_it(comfy, sd15_ckpt):
    s = Swap(comfy, sd15_ckpt, BIRD, "", eos_from="zeros", pooled_from="A")  # Sem + Zero needs no B
    assert torch.equal(s.cond[0, :4], s.a[0, :4]) and not s.cond[0, 4:].any()


def test_a_window_that_ends_before_it_starts_is_refused_before_running(comfy, sd15_ckpt):
    with pytest.raises(GraphError, match=r"EOSSwapConditioning: start_percent \(0.5\) must be below end_percent \(0.2\)"):
        comfy.run(swap_graph(sd15_ckpt, BIRD, CHAIR, start_percent=0.5, end_percent=0.2))


def test_prompts_encoded_by_different_clip_types_are_refused(comfy, sd15_ckpt, sd2x_ckpt):
    g = swap_graph(sd15_ckpt, BIRD, CHAIR)
    g["11"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd2x_ckpt}}
    g["5"]["inputs"]["clip_b"] = ["11", 1]
    with pytest.raises(GraphError, match=r"EOSSwapConditioning: prompt A is encoded by a SD1.x CLIP \(clip_l\) but "
                                         r"clip_b is SD2.x \(clip_h\); both prompts must use the same type"):
        comfy.run(g, fresh_cache=False)


def test_clip_b_of_the_same_type_encodes_b(comfy, sd15_ckpt):
    g = swap_graph(sd15_ckpt, BIRD, CHAIR)
    g["11"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["1", 1], "stop_at_clip_layer": -2}}
    g["12"] = {"class_type": "CLIPTextEncode", "inputs": {"text": CHAIR, "clip": ["11", 0]}}
    g["5"]["inputs"]["clip_b"] = ["11", 0]
    r = comfy.run(g, outputs=["2", "12"], fresh_cache=False)
    cond, a, b = r.output_value("5", 0)[0][0], r.output_value("2", 0)[0][0], r.output_value("12", 0)[0][0]
    ids = [[[int(t) for t, _ in c] for c in r.output_value("1", 1).tokenize(p)["l"]] for p in (BIRD, CHAIR)]
    assert torch.equal(cond, reference_swap(a, b, ids[0], ids[1]))


def test_an_unknown_clip_type_is_refused(comfy):
    import comfy.sd as sd
    import comfy.text_encoders.aura_t5 as aura
    import nodes

    clip = sd.CLIP(no_init=True)
    clip.tokenizer = aura.AuraT5Tokenizer()
    clip.tokenizer_options = {}
    node = nodes.NODE_CLASS_MAPPINGS["EOSSwapConditioning"]
    with pytest.raises(ValueError, match=r"EOSSwapConditioning: clip has a tokenizer this node does not know "
                                         r"\(AuraT5Tokenizer\); .* Use a checkpoint or CLIP loader of one of those types"):
        node.execute(clip, BIRD, CHAIR)
