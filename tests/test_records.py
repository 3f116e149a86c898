"""Tier 1: the contents of the attention nodes' files (shapefirst.records)."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from shapefirst.records import kl_csv, to_json, view_metrics_csv


def test_view_metrics_csv_has_one_row_per_step_and_blank_missing_values():
    text = view_metrics_csv([0, 3], [14.6, 0.03], {"SOS": [0.5, 0.25], "EOS": [0.1, 0.2]}, [0.1, 0.4], [None, 1.0])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["step", "sigma", "share_SOS", "share_EOS", "edge_f1_mean", "edge_f1_relative"]
    assert rows[1] == ["0", "14.6", "0.5", "0.1", "0.1", ""] and rows[2] == ["3", "0.03", "0.25", "0.2", "0.4", "1"]


def test_kl_csv_and_json():
    data = {"steps": [1, 2], "kl_a_b": [0.5, 1e-7], "kl_b_a": [0.25, 0.0]}
    assert kl_csv(data).splitlines() == ["step,kl_a_b,kl_b_a", "1,0.5,0.25", "2,1e-07,0"]
    assert json.loads(to_json(data)) == data
    with pytest.raises(ValueError):
        to_json({"x": math.nan})
