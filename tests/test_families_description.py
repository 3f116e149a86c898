"""The model-family descriptions (shapefirst/families.py): consistent as data (tier 1), naming classes the
hosts really have (tier 2), and the only place that knows a family's classes."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from shapefirst import families as F

REPO = Path(__file__).resolve().parent.parent


def test_every_family_says_what_each_feature_does_and_why_not():
    for family in F.FAMILIES:
        assert set(family.features) == set(F.FEATURES), family.name
        for feature in F.FEATURES:
            support = family.support(feature)
            assert support.ok or len(support.why) > 20, (family.name, feature)
        assert family.support(F.TRUNCATION).ok  # truncation never looks inside the network


def test_each_family_has_the_layout_its_features_read():
    for family in F.FAMILIES:
        if family.attention == F.CROSS:
            assert family.layers is not None and family.joint is None, family.name
            assert family.layers.reached in (F.ATTN2_PATCH, F.OVERRIDE, F.NO_OPTIONS)
            assert (family.layers.blocks is None) != (family.layers.holder is None)
            assert 0 <= family.layers.text_call < family.layers.calls
            if family.support(F.KV_PATCH).ok:
                assert family.kv is not None and family.kv.kind in ("value_context", "separate", "fused")
        else:
            assert family.attention == F.JOINT and family.layers is None, family.name
            assert not family.support(F.TEXT_CACHE).ok and not family.support(F.KV_PATCH).ok
            if family.support(F.CAPTURE).ok:
                assert family.joint is not None, family.name  # the capture reads the joint layout


def test_families_of_one_class_are_told_apart():
    """Two descriptions of one network class differ by a ``when`` condition or by their layers' class, so
    at most one matches a network."""
    by_class: dict = {}
    for family in F.FAMILIES:
        by_class.setdefault(family.model_class, []).append(family)
    for shared in (v for v in by_class.values() if len(v) > 1):
        keys = [(f.when, f.layers.layer_class if f.layers else None) for f in shared]
        assert len(set(keys)) == len(keys), [f.name for f in shared]


def test_when_conditions_are_ones_the_glue_reads():
    for family in F.FAMILIES:
        for condition in family.when:
            assert condition[1] in ("is None", "is not None") and len(condition) == 2 or \
                condition[1] == "==" and len(condition) == 3, (family.name, condition)


@pytest.mark.parametrize("order,text,image", [(F.TEXT_FIRST, (0, 5), (5, 16)), (F.IMAGE_FIRST, (16, 5), (0, 16))])
def test_joint_layouts_place_the_text_and_the_image(order, text, image):
    assert F.JointLayout(order=order).spans(5, 16) == (text, image)


def test_text_encoders_are_one_per_tokenizer_and_every_family_names_known_ones():
    classes = [e.tokenizer_class for e in F.TEXT_ENCODERS.values()]
    assert len(set(classes)) == len(classes)
    for family in F.FAMILIES:
        assert set(family.text_encoders) <= set(F.TEXT_ENCODERS), family.name


def test_no_other_file_of_the_pack_names_a_described_class():
    """The capture, the text cache, the K/V patch and the EOS swap read the descriptions: none of the
    pack's other files names a network, layer, embedder or tokenizer class of a family."""
    names = set()
    for family in F.FAMILIES:
        names.add(family.model_class.rsplit(".", 1)[1])
        if family.layers:
            names.add(family.layers.layer_class.rsplit(".", 1)[1])
            names.update(n.rsplit(".", 1)[1] for n in (family.layers.holder,) if n)
        if family.kv and family.kv.embedder_class:
            names.add(family.kv.embedder_class.rsplit(".", 1)[1])
    names.update(e.tokenizer_class.rsplit(".", 1)[1] for e in F.TEXT_ENCODERS.values())
    names -= {"Flux", "Chroma", "HunyuanVideo"}  # also the families' names, written in messages and docs
    found = {}
    for path in [*(REPO / "nodes").glob("*.py"), *(REPO / "shapefirst").glob("*.py")]:
        if path.name == "families.py" and path.parent.name == "shapefirst":
            continue
        text = path.read_text(encoding="utf-8")
        hits = sorted(n for n in names if re.search(rf"\b{n}\b", text))
        if hits:
            found[path.name] = hits
    assert found == {}


@pytest.mark.comfy
def test_every_described_class_exists_in_this_comfyui(comfy):
    def resolve(dotted):
        module, name = dotted.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)

    for family in F.FAMILIES:
        resolve(family.model_class)
        if family.layers:
            resolve(family.layers.layer_class)
            if family.layers.holder:
                resolve(family.layers.holder)
        if family.kv and family.kv.embedder_class:
            resolve(family.kv.embedder_class)
    for encoder in F.TEXT_ENCODERS.values():
        resolve(encoder.tokenizer_class)
