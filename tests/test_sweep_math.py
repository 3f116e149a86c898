"""Tier 1: the pure parts of the truncation sweep (shapefirst/sweep.py), no ComfyUI."""

from __future__ import annotations

import numpy as np
import pytest

from shapefirst import sweep


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


def test_windows_from_a_values_and_fractions():
    ws = sweep.parse_windows(["a=5", "10", "end=0.4", "adaptive=0.1", "a=5", "a=0"], steps=25)
    assert [w.label for w in ws] == ["a=0", "a=5", "a=10", "end=0.4", "adaptive=0.1"]
    by = {w.label: w for w in ws}
    assert by["a=0"].end == 1.0
    # the node's window ends at round(end * steps): a = 5 of 25 must end guidance after step 20
    assert round(by["a=5"].end * 25) == 20 and round(by["a=10"].end * 25) == 15
    assert by["end=0.4"].a == 15  # the paper's default: a = 15 of 25
    assert by["adaptive=0.1"].mode == "adaptive" and by["adaptive=0.1"].threshold == 0.1


@pytest.mark.parametrize("spec,fix", [("end=1.5", r"\[0, 1\]"), ("end=-0.1", r"\[0, 1\]"), ("a=30", "0 to steps"),
                                      ("a=2.5", "whole number"), ("adaptive=0", "> 0"), ("b=3", "a=, end="),
                                      ("x", "a=10")])
def test_bad_windows_say_the_fix(spec, fix):
    with pytest.raises(sweep.SweepInputError, match=fix):
        sweep.parse_windows([spec], steps=25)


def _jobs(n_prompts=3, specs=("a=2", "a=4")):
    prompts = sweep.parse_prompts("\n".join(f"p{i}" for i in range(n_prompts)))
    return sweep.build_jobs(prompts, sweep.parse_windows(list(specs), 4))


def test_job_list_has_every_pair_once():
    jobs = _jobs()
    assert len(jobs) == 9 and len({j.key for j in jobs}) == 9


def test_work_queue_requeues_a_dropped_servers_jobs_and_never_completes_twice():
    jobs = _jobs()
    q = sweep.WorkQueue(jobs, done={jobs[0].key})
    a1, a2 = q.take("A"), q.take("A")
    b1 = q.take("B")
    assert jobs[0] not in (a1, a2, b1)
    assert q.complete(a1, "A") and not q.complete(a1, "A")  # twice: ignored
    assert not q.complete(b1, "A")  # not in flight on A
    assert q.drop("A") == [a2]
    assert q.take("B") == a2  # handed back first
    assert not q.complete(a2, "A") and q.complete(a2, "B")
    while (j := q.take("B")) is not None:
        q.complete(j, "B")
    assert not q.finished  # b1 still in flight
    q.complete(b1, "B")
    assert q.finished and q.done == {j.key for j in jobs} and q.requeued == 1


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
    assert sweep.l1(a, a.copy()) == 0.0
    assert sweep.l1(a, b) == pytest.approx(0.3)
    assert sweep.cosine([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert sweep.cosine([1, 0], [0, 1]) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        sweep.l1(a, b[:2])


def test_table_aggregates_per_window_against_the_reference_time():
    windows = sweep.parse_windows(["a=2"], 4)
    rows = [
        {"prompt_index": 0, "window": "a=0", "seconds": 2.0, "l1": 0.0, "saved_fraction": 0.0, "skipped_passes": 0},
        {"prompt_index": 1, "window": "a=0", "seconds": 4.0, "l1": 0.0, "saved_fraction": 0.0, "skipped_passes": 0},
        {"prompt_index": 0, "window": "a=2", "seconds": 1.5, "l1": 0.1, "saved_fraction": 0.25, "skipped_passes": 2},
        {"prompt_index": 1, "window": "a=2", "seconds": 3.0, "l1": 0.3, "saved_fraction": 0.25, "skipped_passes": 2},
    ]
    table = sweep.aggregate(rows, windows, fid={"a=2": 12.5})
    ref, cut = table
    assert ref["saved_latency"] == 0.0 and cut["saved_latency"] == pytest.approx(1 - 4.5 / 6.0)
    assert cut["l1"] == pytest.approx(0.2) and cut["skipped_passes"] == 2 and cut["fid"] == 12.5
    assert "image_clip" not in cut  # nobody computed it: left out, never faked
    md = sweep.table_markdown(table)
    assert "Image-CLIPScore" not in md and "| a=2 | 2 | 2 |" in md and "25.0%" in md
    assert sweep.table_csv(table).splitlines()[0].split(",")[:4] == ["window", "a", "images", "l1"]
    img = sweep.render_tradeoff(table)
    assert img.size == (360 * 2, 320)  # L1 and FID panels


def test_progress_line_rate_and_eta():
    t = iter([0.0, 10.0, 20.0])
    p = sweep.Progress(total=10, already=4, clock=lambda: next(t))
    assert p.step() == "5/10 images, 6.0/min, ETA 50s"
