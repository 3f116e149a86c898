"""Tier 1: the chart descriptions (js/figures.json) and the ui key table (js/ui_keys.json) that the
Python side and the browser both read. The browser's reading of the same files is checked in
test_browser.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from shapefirst import chart, heatmaps, ui_keys

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


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(rgb)


def _pixels_of(img: np.ndarray, colour, box=None, tol: int = 30) -> int:
    a = (img * 255).round().astype(int)
    if box is not None:
        x0, y0, x1, y1 = box
        a = a[y0:y1, x0:x1]
    return int((np.abs(a - np.array(colour)).sum(-1) < tol).sum())


def test_every_token_class_has_one_colour_in_every_chart():
    """SD1.5 has an [SOS] class and Wan's umT5 none: SEM was drawn in the first palette colour in the one
    and the second in the other. Now each class takes its look from the one 'classes' table."""
    table = json.loads((REPO / "js" / "figures.json").read_text())["classes"]
    assert set(table) == {"SOS", "SEM", "EOS", "PAD"}
    assert len({t["color"] for t in table.values()}) == 4 and len({t["marker"] for t in table.values()}) == 4
    shares = {"SOS": [0.6, 0.5], "SEM": [0.1, 0.2], "EOS": [0.2, 0.2], "PAD": [0.1, 0.1]}
    sd15 = {"steps": [0, 1], "class_shares": shares}
    wan = {"steps": [0, 1], "class_shares": {k: v for k, v in shares.items() if k != "SOS"}}
    for payload in (sd15, wan):
        (panel, _) = chart.figure_panels("attention_view", payload)
        for s in panel.series:
            assert _hex(s.color) == table[s.label]["color"] and s.marker == table[s.label]["marker"], s.label
            assert s.dashed == table[s.label]["dashed"]
        img = chart.render_figure("attention_view", payload)
        for s in panel.series:
            assert _pixels_of(img, s.color, (0, 0, 420, 360)) > 50, s.label


def test_a_class_hidden_under_another_line_stays_visible():
    """[SOS] and [EOS] with the same weights: the later line covers the earlier one, the markers do not."""
    same = [0.4, 0.45, 0.5, 0.45]
    payload = {"steps": [0, 1, 2, 3], "class_shares": {"SOS": same, "EOS": list(same), "SEM": [0.1] * 4}}
    img = chart.render_figure("attention_view", payload)
    sos, eos = chart.CLASS_STYLES["SOS"]["color"], chart.CLASS_STYLES["EOS"]["color"]
    plot = (72, 26, 408, 250)  # the plot area of the first panel, legend excluded
    assert _pixels_of(img, sos, plot) > 40 and _pixels_of(img, eos, plot) > 40


def test_every_panel_names_its_y_axis_and_draws_the_name():
    for name, fig in chart.figures()["figures"].items():
        for panel in fig["panels"]:
            assert panel.get("y_label"), (name, panel["title"])
    curves = {"curves": {"forward_signal_low": [1.0, 0.5, 0.2]}}
    (panel, *_) = chart.figure_panels("frequency_curves", curves)
    assert panel.y_label == "RMS"
    strip = (0, 60, 20, 240)  # left of the tick labels, along the plot's height
    drawn = chart.render_panels([panel])
    panel.y_label = ""
    bare = chart.render_panels([panel])
    assert _pixels_of(drawn, (0, 0, 0), strip, tol=200) > 10 and _pixels_of(bare, (0, 0, 0), strip, tol=200) == 0


def _title_gaps(title: str) -> list[int]:
    """Widths of the blank column runs between the inked columns of a chart's title."""
    img = chart.render_panels([chart.Panel(title)])
    ink = (img[:22, :300].min(-1) < 0.6).any(0)
    cols = np.flatnonzero(ink)
    return [int(b - a - 1) for a, b in zip(cols, cols[1:]) if b - a > 1]


def test_word_spaces_are_wider_than_letter_spacing():
    """The built-in font at 10 px drew "lower is closer" as "lowe r is close r"."""
    gaps = sorted(_title_gaps("lower is closer"))
    assert gaps[-2] - gaps[-3] >= 2, gaps  # the two spaces stand out from every gap inside a word


def test_labels_without_a_glyph_are_drawn_readably():
    from shapefirst import text

    assert text.drawable("\u2581") == "_" and text.drawable("3 \u2581bird") == "3 _bird"
    assert text.drawable("caf\u00e9") == "cafe" and text.drawable("\u732b") == "<U+732B>"
    assert text.drawable("a\nb") == "a\\nb" and text.drawable("A dog, (blue:1.2)") == "A dog, (blue:1.2)"
    image = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(1))
    maps = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    piece = heatmaps.token_step_grid(image, maps, ["12 \u2581"], ["0"], cell=32)
    ascii_ = heatmaps.token_step_grid(image, maps, ["12 _"], ["0"], cell=32)
    assert torch.equal(piece, ascii_)  # the T5 piece is drawn as the low line it looks like, not as a box
