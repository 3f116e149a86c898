"""Tier 1: the pure parts of the truncation sweep (shapefirst/sweep.py), no ComfyUI."""

from __future__ import annotations

import numpy as np
import pytest

from shapefirst import sweep
from shapefirst import sweep_table as table


def test_prompt_files_txt_csv_jsonl():
    txt = sweep.parse_prompts("# my prompts\nA dog\n\n  a cat  \n", "txt", default_seed=7)
    assert [(p.index, p.text, p.seed) for p in txt] == [(0, "A dog", 7), (1, "a cat", 7)]
    csv_ = sweep.parse_prompts('prompt,seed\n"a dog, running",3\na cat,\n', "csv", default_seed=9)
    assert [(p.text, p.seed) for p in csv_] == [("a dog, running", 3), ("a cat", 9)]
    jl = sweep.parse_prompts('{"prompt": "x", "seed": 5}\n\n{"prompt": "y"}\n', "jsonl")
    assert [(p.text, p.seed) for p in jl] == [("x", 5), ("y", 0)]


@pytest.mark.parametrize("text,kind,fix", [
    ("\n# only a comment\n", "txt", "one prompt per line"),
    ("text,seed\na,1\n", "csv", "'prompt' column"),
    ('{"text": "a"}\n', "jsonl", '"prompt" string'),
    ("not json\n", "jsonl", "one"),
    ("prompt,seed\na,x\n", "csv", "whole number"),
])
def test_bad_prompt_files_say_the_fix(text, kind, fix):
    with pytest.raises(sweep.SweepInputError, match=fix):
        sweep.parse_prompts(text, kind)


def test_windows_from_a_values_percentages_and_fractions():
    ws = sweep.parse_windows(["a=5", "10", "end=0.4", "adaptive=0.1", "a=5", "a=0", "a=40%", "a=20%"], steps=25)
    assert [w.label for w in ws] == ["a=0", "a=5", "a=10", "end=0.4", "adaptive=0.1"]  # same windows dropped
    by = {w.label: w for w in ws}
    assert by["a=0"].end == 1.0
    # the node's window ends at round(end * steps): a = 5 of 25 must end guidance after step 20
    assert round(by["a=5"].end * 25) == 20 and round(by["a=10"].end * 25) == 15
    assert by["end=0.4"].a == 15  # the paper's default: a = 15 of 25
    assert by["adaptive=0.1"].mode == "adaptive" and by["adaptive=0.1"].threshold == 0.1
    assert by["a=10"].describe() == "a=10: the last 10 of 25 steps without the text pass"


@pytest.mark.parametrize("spec,steps,a", [("a=40%", 25, 10), ("a=30%", 25, 8), ("a=10%", 25, 3), ("a=2%", 25, 1),
                                          ("a=50%", 5, 3), ("a=100%", 25, 25), ("a=0%", 25, 0), ("a=12.5%", 8, 1),
                                          ("a = 40 %", 50, 20)])
def test_a_percentage_of_the_steps_rounds_to_the_nearest_step_halves_up(spec, steps, a):
    w = sweep.parse_window(spec, steps)
    assert w.a == a and round(w.end * steps) == steps - a  # what the node then guides
    assert w.label == "a=" + spec.split("=")[1].replace(" ", "")


def test_a_percentage_that_rounds_to_no_step_is_refused_with_the_least_that_works():
    with pytest.raises(sweep.SweepInputError, match=r"rounds to 0 steps.*at least 2%"):
        sweep.parse_window("a=1%", 25)
    assert sweep.parse_window("a=2%", 25).a == 1


@pytest.mark.parametrize("spec,fix", [("end=1.5", r"\[0, 1\]"), ("end=-0.1", r"\[0, 1\]"), ("a=30", "0 to steps"),
                                      ("a=2.5", "whole number"), ("adaptive=0", "> 0"), ("b=3", "a=, end="),
                                      ("x", "a=10"), ("a=150%", "0% to 100%"), ("a=x%", "0% to 100%")])
def test_bad_windows_say_the_fix(spec, fix):
    with pytest.raises(sweep.SweepInputError, match=fix):
        sweep.parse_windows([spec], steps=25)


def _jobs(n_prompts=3, specs=("a=2", "a=4")):
    prompts = sweep.parse_prompts("\n".join(f"p{i}" for i in range(n_prompts)))
    return sweep.build_jobs(prompts, sweep.parse_windows(list(specs), 4))


def test_job_list_has_every_pair_once():
    jobs = _jobs()
    assert len(jobs) == 9 and len({j.key for j in jobs}) == 9


def test_work_queue_keeps_a_prompts_windows_on_one_server_and_requeues_a_dropped_one():
    jobs = _jobs()  # p0, p1, p2 x (a=0, a=2, a=4)
    key = {j.key: j for j in jobs}
    q = sweep.WorkQueue(jobs, done={"p0|a=0"})
    a1, a2 = q.take("A"), q.take("A")
    b1 = q.take("B")
    assert (a1.key, a2.key, b1.key) == ("p0|a=2", "p0|a=4", "p1|a=0")  # B takes the next prompt, not p0's
    assert q.complete(a1, "A") and not q.complete(a1, "A")  # twice: ignored
    assert not q.complete(b1, "A")  # not in flight on A
    assert q.take("A").key == "p2|a=0" and q.take("B").key == "p1|a=2"
    assert q.drop("A") == [a2, key["p2|a=0"]]  # back in front, and A's prompts are free
    assert [q.take("B").key for _ in range(4)] == ["p1|a=4", "p0|a=4", "p2|a=0", "p2|a=2"]
    assert q.take("C") is None  # the last pending job belongs to a prompt B holds
    j = q.take("B")
    assert j.key == "p2|a=4" and not q.finished
    for job, server in list(q.in_flight.values()):
        q.complete(job, server)
    assert q.finished and q.done == set(key) and q.requeued == 2


def test_a_server_with_no_prompt_of_its_own_waits():
    q = sweep.WorkQueue(_jobs(n_prompts=1))
    assert q.take("A").key == "p0|a=0"
    assert q.take("B") is None  # p0's windows belong to A: timed against their twin there
    assert q.take("A").key == "p0|a=2"


def test_results_file_resume_ignores_a_torn_line_and_refuses_other_settings(tmp_path):
    path = tmp_path / "results.jsonl"
    cfg = {"steps": 4}
    path.write_text(sweep.record_line({"sweep": cfg}) + sweep.record_line({"key": "p0|a=0", "seconds": 1.0})
                    + '{"key": "p0|a=2", "sec')
    assert list(sweep.load_results(path, cfg)) == ["p0|a=0"]
    with pytest.raises(sweep.SweepInputError, match="steps"):
        sweep.load_results(path, {"steps": 8})
    assert sweep.load_results(tmp_path / "none.jsonl", cfg) == {}
    sweep.drop_torn_tail(path)
    with open(path, "a") as f:
        f.write(sweep.record_line({"key": "p0|a=2"}))
    assert list(sweep.load_results(path, cfg)) == ["p0|a=0", "p0|a=2"]


def test_l1_and_cosine_on_constructed_values():
    a = np.full((4, 4, 3), 0.2, dtype=np.float32)
    b = np.full((4, 4, 3), 0.5, dtype=np.float32)
    assert table.l1(a, a.copy()) == 0.0
    assert table.l1(a, b) == pytest.approx(0.3)
    assert table.cosine([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert table.cosine([1, 0], [0, 1]) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        table.l1(a, b[:2])


L1 = table.Column("l1", "L1", "{:.3f}", "L1 to a=0")


def _row(p, w, seconds, server="S", session="r1", **kw):
    return {"prompt_index": p, "window": w, "seconds": seconds, "server": server, "session": session, **kw}


def test_table_aggregates_per_window_against_each_images_twin():
    windows = sweep.parse_windows(["a=2"], 4)
    acct = {"saved_fraction": 0.0, "skipped_passes": 0}
    cut = {"saved_fraction": 0.25, "skipped_passes": 2}
    rows = [_row(0, "a=0", 2.0, l1=0.0, **acct), _row(1, "a=0", 4.0, l1=0.0, **acct),
            _row(0, "a=2", 1.5, l1=0.1, **cut), _row(1, "a=2", 3.0, l1=0.3, **cut)]
    tab, notes = table.aggregate(rows, windows, [L1], per_window={"fid": {"a=2": 12.5}})
    ref, a2 = tab
    assert ref["saved_latency"] == 0.0 and a2["saved_latency"] == pytest.approx(1 - 4.5 / 6.0) and not notes
    assert a2["timed_pairs"] == 2 and a2["l1"] == pytest.approx(0.2) and a2["skipped_passes"] == 2
    assert a2["fid"] == 12.5 and "image_clip" not in a2  # nobody computed it: left out, never faked
    fid = table.Column("fid", "FID", "{:.3f}", "FID")
    md = table.table_markdown(tab, [L1, fid])
    assert "Image-CLIPScore" not in md and "| a=2 | 2 | 2 | 25.0% | 2 |" in md
    assert table.table_csv(tab, [L1, fid]).splitlines()[0].split(",")[:6] == [
        "window", "a", "images", "saved_latency", "timed_pairs", "l1"]
    img = table.render_tradeoff(tab, [L1, fid])
    assert img.size == (380 * 2, 330)  # L1 and FID panels


def test_images_without_a_twin_timed_on_the_same_server_in_the_same_run_are_left_out():
    """Times taken on another server, or in an earlier run, under another load, are not compared: the
    sweep that printed -33.2% for a window that saves work had averaged exactly such times."""
    windows = sweep.parse_windows(["a=2"], 4)
    rows = [_row(0, "a=0", 2.0), _row(1, "a=0", 1.0, server="T"), _row(2, "a=0", 2.0, session="r0"),
            _row(0, "a=2", 1.0), _row(1, "a=2", 5.0, server="S"), _row(2, "a=2", 9.0), _row(3, "a=2", 1.0),
            _row(4, "a=0", None), _row(4, "a=2", 1.0)]
    tab, notes = table.aggregate(rows, windows)
    a2 = tab[1]
    assert a2["timed_pairs"] == 1 and a2["saved_latency"] == pytest.approx(0.5)  # only prompt 0 counts
    assert len(notes) == 1 and "4 image(s) left out" in notes[0]
    for reason in (table.OTHER_SERVER, table.OTHER_RUN, table.NO_TWIN, table.UNTIMED):
        assert f"{reason}: 1" in notes[0], reason
    assert "saved_latency" not in table.aggregate([_row(1, "a=2", 5.0, server="S"), _row(1, "a=0", 1.0, server="T")],
                                                  windows)[0][1]


def test_progress_line_rate_and_eta():
    t = iter([0.0, 10.0, 20.0])
    p = sweep.Progress(total=10, already=4, clock=lambda: next(t))
    assert p.step() == "5/10 images, 6.0/min, ETA 50s"


def test_a_metric_is_added_in_one_place(tmp_path, monkeypatch):
    """One entry in devtools/sweep_metrics.METRICS gives a metric its option, its column in the table and
    CSV, its panel in the chart, and its line under 'left out' when its model is not given."""
    from PIL import Image

    from devtools import sweep_cli, sweep_metrics, sweep_summary

    class Brightness:  # stands in for a scorer with a model of its own
        def __init__(self, scale):
            self.scale = scale

        def score(self, item):
            return float(item.image.mean()) * self.scale

    def make(args, ctx):
        if not args.brightness_scale:
            raise sweep_metrics.Unavailable("no --brightness-scale given")
        return Brightness(float(args.brightness_scale))

    metric = sweep_metrics.Metric(table.Column("bright", "Brightness", "{:.2f}", "brightness"), make,
                                  (sweep_metrics.Option("--brightness-scale", "scale of the brightness", "X"),))
    monkeypatch.setattr(sweep_metrics, "METRICS", sweep_metrics.METRICS + [metric])
    args = sweep_cli.parse_args(["--prompts", "p.txt", "--checkpoint", "c", "--brightness-scale", "2"])
    active, left_out = sweep_metrics.prepare(args, sweep_metrics.Context(tmp_path))
    assert [m.column.key for m, _ in active] == ["l1", "bright"]
    assert {m.column.key: why for m, why in left_out} == {
        "image_clip": "no --clip-vision given (a CLIP vision model ComfyUI's CLIPVisionLoader can load)",
        "text_clip": "no --clip-hf given (a local transformers CLIP folder with both towers)",
        "fid": "no --fid-weights given (the Inception weights file of torchmetrics' FID)",
        "toy_image": "no --toy-clip given (the parameter folder of ShapeFirst World, devtools/world/params)",
        "toy_text": "no --toy-clip given (the parameter folder of ShapeFirst World, devtools/world/params)"}

    (tmp_path / "images").mkdir()
    records = {}
    for p, w, grey in ((0, "a=0", 100), (0, "a=2", 150), (1, "a=0", 50), (1, "a=2", 50)):
        Image.new("RGB", (8, 8), (grey,) * 3).save(tmp_path / "images" / f"{p}{w}.png")
        records[f"p{p}|{w}"] = {"key": f"p{p}|{w}", "prompt_index": p, "prompt": "x", "window": w,
                                "image": f"images/{p}{w}.png", "seconds": 1.0 if w == "a=0" else 0.5,
                                "server": "S", "session": "r"}
    rows, per_window = sweep_metrics.score(records, tmp_path, active)
    assert {r["key"]: round(r["bright"], 4) for r in rows} == {
        "p0|a=0": round(200 / 255, 4), "p0|a=2": round(300 / 255, 4), "p1|a=0": round(100 / 255, 4),
        "p1|a=2": round(100 / 255, 4)}
    windows = sweep.parse_windows(["a=2"], 4)
    tab, notes = sweep_summary.write_summary(rows, windows, tmp_path, active, per_window, left_out)
    assert tab[1]["bright"] == pytest.approx(400 / 255 / 2) and tab[1]["saved_latency"] == pytest.approx(0.5)
    assert "bright" in (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    md = (tmp_path / "summary.md").read_text()
    assert "| Brightness |" in md and "- Image-CLIPScore: no --clip-vision given" in md
    with Image.open(tmp_path / "summary.png") as chart:
        assert chart.size == (380 * 2, 330)  # L1 and brightness
