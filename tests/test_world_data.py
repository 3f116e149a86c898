"""The world's data: one CLIP token per word (ComfyUI's real tokenizer), captions that say what
the scene shows, reproducible scenes, the fixed evaluation prompts."""

from __future__ import annotations

import numpy as np
import pytest

from devtools.world import evalset, scenes, vocab
from devtools.world.dataset import ATTRIBUTES, labels_of
from devtools.world.render import render


@pytest.fixture(scope="module")
def sd1_tokenizer(runtime_paths):
    from devtools.boot import importable

    importable()
    import comfy.sd1_clip

    return comfy.sd1_clip.SD1Tokenizer()


def test_every_word_is_one_clip_token(runtime_paths):
    from devtools.world.tokens import word_ids

    multi = {w: word_ids(w) for w in vocab.words() if len(word_ids(w)) != 1}
    assert not multi


def test_token_ids_equal_comfyui_sd1_tokenizer(sd1_tokenizer):
    from devtools.world.tokens import encode

    captions = [scenes.scene(1, i)["caption"] for i in range(40)] + ["", "a red circle"]
    ours = encode(captions)
    for caption, row in zip(captions, ours):
        theirs = [t for t, _ in sd1_tokenizer.tokenize_with_weights(caption)["l"][0]]
        assert row.tolist() == theirs, caption


def test_trained_token_rows_cover_every_caption(runtime_paths):
    from devtools.world.tokens import encode, token_ids

    ids = set(token_ids())
    tokens = encode([scenes.scene(7, i)["caption"] for i in range(300)])
    assert set(tokens.unique().tolist()) <= ids


def test_scenes_are_reproducible_and_captions_name_their_objects():
    for i in range(200):
        s = scenes.scene(3, i)
        assert s == scenes.scene(3, i)
        assert np.array_equal(render(s), render(scenes.scene(3, i)))
        for o in s["objects"]:
            assert o["shape"] in s["caption"]
        if s["relation"] is None:
            assert len(s["objects"]) == 1
        else:
            a, b = s["objects"]
            if s["relation"] == "above":
                assert a["y"] < b["y"]
            elif s["relation"] == "left of":
                assert a["x"] < b["x"]
            assert np.hypot(a["x"] - b["x"], a["y"] - b["y"]) >= a["r"] + b["r"]


def test_objects_are_drawn_in_their_colour_where_they_are():
    for i in range(100):
        s = scenes.single(5, i, shape=vocab.SHAPES[i % 8], colour=list(vocab.COLOURS)[i % 8], size="big",
                          position=vocab.POSITIONS[i % 5], bg_kind="gray")
        o = s["objects"][0]
        img = render(s).astype(float)
        # the centre of a cross, star, heart, diamond, circle, square, triangle is inside it; the moon's bite is not
        if o["shape"] != "moon":
            centre = img[int(round(o["y"])), int(round(o["x"]))]
            assert np.abs(centre - o["rgb"]).max() < 30, (o["shape"], centre, o["rgb"])
        labels = labels_of(s)
        assert ATTRIBUTES["shape"][labels[0, 0]] == o["shape"] and labels[1, 0] == -1


def test_evaluation_prompts_are_fixed():
    assert evalset.load() == evalset.build()
    pairs = evalset.load()["pairs"]
    for p in pairs:
        diff = [k for k in ("shape", "colour") if p["a"][k] != p["b"][k]]
        assert diff == [p["differs"]]


def test_shipped_workflows_in_world_words():
    import json

    from devtools import paths, world

    replaced = 0
    for path in sorted(paths.WORKFLOWS.glob("*.json")):
        original = json.loads(path.read_text())
        before = json.dumps(original)
        swapped = world.in_world_words(original)
        assert json.dumps(original) == before  # the input is untouched
        for node in swapped.get("nodes", []):
            for v in node.get("widgets_values") or []:
                assert not (isinstance(v, str) and v in evalset.WORKFLOW_PROMPTS), (path.name, v)
        replaced += json.dumps(swapped) != before
    assert replaced >= 10
    api = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "A blue bird", "clip": ["2", 1]}}}
    assert world.in_world_words(api)["1"]["inputs"] == {"text": "a blue circle", "clip": ["2", 1]}
    for text in evalset.WORKFLOW_PROMPTS.values():  # every world prompt uses the world's words only
        assert set(text.split()) <= set(vocab.words()), text
