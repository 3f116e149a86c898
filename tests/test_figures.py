"""Tier 1: the chart descriptions (js/figures.json) and the ui key table (js/ui_keys.json) that the
Python side and the browser both read. The browser's reading of the same files is checked in
test_browser.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from shapefirst import chart, ui_keys

REPO = Path(__file__).resolve().parent.parent


def test_every_series_reads_a_path_and_every_figure_draws():
    figs = chart.figures()["figures"]
    assert set(figs) == {"frequency_curves", "attention_view", "attention_kl", "guidance"}
    for name, fig in figs.items():
        assert fig["panels"], name
        for panel in fig["panels"]:
            assert panel["title"] and panel["series"]
            for s in panel["series"]:
                assert isinstance(s["label"], str) and isinstance(s["y"], str), (name, s)
        img = chart.render_figure(name, {})  # an empty payload draws empty axes, never raises
        assert img.shape == (360, 420 * len(fig["panels"]), 3) and img.dtype == np.float32


def test_series_values_come_from_the_payload_paths():
    payload = {"steps": [2, 4, 6], "class_shares": {"SEM": [0.5, 0.6, 0.7], "PAD": [0.1, 0.1, 0.0]},
               "edge_f1": {"mean": [0.2, 0.3, 0.4], "relative": [None, 0.75, 1.0]}}
    shares, f1 = chart.figure_panels("attention_view", payload)
    assert [s.label for s in shares.series] == ["SEM", "PAD"]  # classes absent from the payload are skipped
    assert shares.series[0].values == [0.5, 0.6, 0.7] and shares.series[0].x == [2.0, 4.0, 6.0]
    rel, mean = f1.series
    assert math.isnan(rel.values[0]) and rel.values[1:] == [0.75, 1.0] and mean.dashed and not rel.dashed

    report = {"steps": 10, "curve": [{"step": 0, "rms_uncond": 2.0, "rms_guidance": 1.0, "ratio": 0.5},
                                     {"step": 3, "rms_uncond": 1.0, "rms_guidance": 0.1, "ratio": 0.1}]}
    strength, ratio = chart.figure_panels("guidance", report)
    assert strength.x_range == (0.0, 9.0)  # the axis spans every step, guided or not
    assert strength.series[1].values == [1.0, 0.1] and strength.series[1].x == [0.0, 3.0]
    assert ratio.series[0].values == [0.5, 0.1]


def test_the_chart_draws_each_series_in_its_palette_colour():
    payload = {"steps": [0, 1, 2, 3], "kl_a_b": [0.0, 1.0, 2.0, 3.0], "kl_b_a": [3.0, 2.0, 1.0, 0.0]}
    img = (chart.render_figure("attention_kl", payload) * 255).round().astype(np.uint8)
    for colour in chart.PALETTE[:2]:
        assert (np.abs(img.astype(int) - np.array(colour)).sum(-1) < 30).sum() > 100, colour


def test_ui_keys_are_the_ones_the_nodes_send():
    table = json.loads((REPO / "js" / "ui_keys.json").read_text())
    assert (ui_keys.CURVES, ui_keys.GUIDANCE, ui_keys.TOKENS, ui_keys.ATTENTION, ui_keys.ATTENTION_KL) == (
        "shapefirst_curves", "shapefirst_guidance", "shapefirst_tokens", "shapefirst_attention",
        "shapefirst_attention_kl")
    assert ui_keys.GUIDANCE_EVENT == "shapefirst.guidance" == table["events"]["guidance"]
    assert {"TruncatedCFGSampler", "TruncatedCFGGuider", "TruncatedCFGModel"} <= set(ui_keys.NODES["guidance"])
