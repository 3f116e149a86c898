"""Tier 1: the guidance window and its bookkeeping (no ComfyUI)."""

import pytest
import torch

from shapefirst import guidance


@pytest.mark.parametrize("n,end,a", [(50, 0.4, 30), (25, 0.4, 15), (50, 0.0, 50), (50, 1.0, 0), (50, 0.8, 10),
                                     (25, 0.2, 20)])
def test_window_matches_the_papers_a(n, end, a):
    first, stop = guidance.window_steps(n, 0.0, end)
    assert first == 0 and n - stop == a  # a = number of final steps without the text pass


def test_late_window_for_fig7():
    assert guidance.window_steps(50, 0.4, 1.0) == (20, 50)


@pytest.mark.parametrize("start,end", [(0.5, 0.4), (-0.1, 0.4), (0.0, 1.1), (float("nan"), 0.5)])
def test_bad_windows_are_refused(start, end):
    with pytest.raises(ValueError):
        guidance.window_steps(10, start, end)


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        guidance.window_steps(0, 0.0, 0.4)


def test_step_of_sigma_follows_the_intervals():
    schedule = [10.0, 5.0, 2.0, 1.0, 0.0]
    assert [guidance.step_of_sigma(s, schedule) for s in schedule[:-1]] == [0, 1, 2, 3]
    assert guidance.step_of_sigma(12.0, schedule) == 0  # noise added above sigma_0 (s_churn)
    assert guidance.step_of_sigma(7.0, schedule) == 0  # a midpoint evaluation (dpm_2, dpmpp_2s)
    assert guidance.step_of_sigma(1.5, schedule) == 2
    assert guidance.step_of_sigma(0.3, schedule) == 3
    assert guidance.step_of_sigma(0.0, schedule) == 3
    # float32 rounding of a schedule entry still lands on that entry's step
    s32 = float(torch.tensor(5.0, dtype=torch.float32) * (1 + 3e-7))
    assert guidance.step_of_sigma(s32, schedule) == 1


def test_heun_second_evaluation_at_the_boundary_is_outside_a_window_ending_there():
    schedule = [10.0, 5.0, 2.0, 1.0, 0.0]
    plan = guidance.GuidanceWindow(start=0.0, end=0.5).plan(schedule)  # steps 0 and 1 guided
    assert (plan.first, plan.stop) == (0, 2)
    # heun's step 1 evaluates at 5.0 (guided) then at 2.0 = the next step's sigma (not guided)
    assert plan.is_guided(5.0)
    assert not plan.is_guided(2.0)


def test_guidance_strength_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    cond = torch.randn(2, 4, 8, 8, generator=g)
    uncond = torch.randn(2, 4, 8, 8, generator=g)
    u, s, r = guidance.guidance_strength(cond, uncond, x, 7.5)
    for b in range(2):
        eps_u = (x[b] - uncond[b])
        gd = 7.5 * (uncond[b] - cond[b])
        assert u[b].item() == pytest.approx(eps_u.pow(2).mean().sqrt().item(), rel=1e-5)
        assert s[b].item() == pytest.approx(gd.pow(2).mean().sqrt().item(), rel=1e-5)
        assert r[b].item() == pytest.approx(s[b].item() / u[b].item(), rel=1e-5)
    _, s0, _ = guidance.guidance_strength(cond, cond, x, 7.5)
    assert s0.abs().max() == 0


def test_record_saved_fraction():
    acc = guidance.RunRecord(rows_computed=30, rows_full_cfg=40)
    assert acc.saved_fraction == pytest.approx(0.25)
    assert guidance.RunRecord().saved_fraction == 0.0
    assert set(acc.as_dict()) >= {"evaluations", "skipped_passes", "saved_fraction", "curve", "stop_step"}


# -- the schedule object -----------------------------------------------------------------------

SCHEDULE = [14.6, 8.0, 4.0, 2.5, 1.2, 0.5, 0.0]  # 6 steps, descending sigmas


@pytest.mark.parametrize("kwargs,field", [
    ({"start": 0.6, "end": 0.4}, "guidance_start"),
    ({"end": 1.5}, "guidance_end"),
    ({"start": float("nan")}, "guidance_start"),
    ({"units": "sigma", "sigma_low": 5.0, "sigma_high": 2.0}, "sigma_low"),
    ({"units": "sigma", "sigma_low": -1.0}, "sigma_low"),
    ({"units": "percent"}, "window_units"),
    ({"tail": "both"}, "tail"),
    ({"mode": "adaptive", "threshold": 0.0}, "adaptive_threshold"),
])
def test_the_window_is_validated_once_and_names_the_input(kwargs, field):
    with pytest.raises(guidance.WindowError) as info:
        guidance.GuidanceWindow(**kwargs)
    assert info.value.field == field and field in str(info.value)


def test_sigma_bounds_are_not_checked_in_step_units_and_fractions_not_in_sigma_units():
    guidance.GuidanceWindow(units="steps", sigma_low=9.0, sigma_high=1.0)
    guidance.GuidanceWindow(units="sigma", start=0.9, end=0.1, sigma_low=1.0, sigma_high=9.0)


def test_neutral_windows_guide_every_step():
    for w in (guidance.GuidanceWindow(start=0.0, end=1.0),
              guidance.GuidanceWindow(units="sigma", sigma_low=0.0, sigma_high=float("inf")),
              guidance.GuidanceWindow(units="sigma", sigma_low=0.0, sigma_high=1000.0)):
        plan = w.plan(SCHEDULE)
        assert plan.guided_steps == list(range(6)) and all(plan.is_guided(s) for s in SCHEDULE)


def test_sigma_window_guides_the_steps_whose_sigma_lies_inside_inclusive():
    plan = guidance.GuidanceWindow(units="sigma", sigma_low=2.5, sigma_high=8.0).plan(SCHEDULE)
    assert plan.guided_steps == [1, 2, 3]
    assert [plan.is_enabled(i) for i in range(6)] == [False, True, True, True, False, False]
    assert plan.is_guided(6.0) and not plan.is_guided(10.0) and not plan.is_guided(1.2)


def test_sigma_window_means_the_same_noise_range_in_chained_runs():
    w = guidance.GuidanceWindow(units="sigma", sigma_low=2.0, sigma_high=10.0)
    whole = w.plan(SCHEDULE).guided_steps
    high, low = w.plan(SCHEDULE[:4]), w.plan(SCHEDULE[3:])  # steps 0-2, then steps 3-5
    assert whole == high.guided_steps + [3 + i for i in low.guided_steps] == [1, 2, 3]
    # the same fractions do not: each run applies them to its own steps
    f = guidance.GuidanceWindow(start=0.0, end=0.5)
    assert f.plan(SCHEDULE).guided_steps == [0, 1, 2]
    assert f.plan(SCHEDULE[:4]).guided_steps + [3 + i for i in f.plan(SCHEDULE[3:]).guided_steps] != [0, 1, 2]


def test_a_sigma_window_between_two_steps_guides_nothing():
    plan = guidance.GuidanceWindow(units="sigma", sigma_low=5.0, sigma_high=7.0).plan(SCHEDULE)
    assert plan.guided_steps == [] and not any(plan.is_guided(s) for s in SCHEDULE)


def test_model_range_check_says_the_range():
    w = guidance.GuidanceWindow(units="sigma", sigma_low=2.0, sigma_high=5.0)
    w.check_model_range(0.03, 14.6)
    with pytest.raises(guidance.WindowError, match=r"noise range \[0\.001, 1\]"):
        w.check_model_range(0.001, 1.0)
    guidance.GuidanceWindow(start=0.0, end=0.4).check_model_range(0.001, 1.0)  # steps: no range to check


def test_adaptive_stop_ends_guidance_after_the_first_step_below_the_threshold():
    for w in (guidance.GuidanceWindow(mode="adaptive", threshold=0.5, start=0.0, end=0.2),
              guidance.GuidanceWindow(mode="adaptive", threshold=0.5, units="sigma", sigma_low=9.0)):
        plan = w.plan(SCHEDULE)  # adaptive: the window's end is ignored
        assert plan.guided_steps == list(range(6))
        plan.observe(0, 0.9)
        assert plan.adaptive_stop is None
        plan.observe(1, 0.4)
        assert plan.adaptive_stop == 2 and plan.guided_steps == [0, 1]
        plan.observe(3, 0.1)  # only the first crossing counts
        assert plan.adaptive_stop == 2
    fixed = guidance.GuidanceWindow(threshold=0.5).plan(SCHEDULE)
    fixed.observe(0, 0.0)
    assert fixed.adaptive_stop is None


def test_keep_follows_comfyuis_cond_uncond_order():
    assert guidance.GuidanceWindow(tail="uncond").keep == 1
    assert guidance.GuidanceWindow(tail="cond").keep == 0


def test_records_of_chained_runs_add_up_and_steps_continue():
    a = guidance.RunRecord(steps=3, evaluations=3, guided=2, skipped_passes=1, rows_computed=5, rows_full_cfg=6,
                           curve=[{"step": 0}, {"step": 1}])
    b = guidance.RunRecord(steps=4, evaluations=4, skipped_passes=4, rows_computed=4, rows_full_cfg=8, stop_step=1,
                           curve=[{"step": 0}])
    a.extend(b)
    d = a.as_dict()
    assert (d["steps"], d["evaluations"], d["skipped_passes"], d["runs"]) == (7, 7, 5, 2)
    assert d["saved_fraction"] == pytest.approx(1 - 9 / 14)
    assert [p["step"] for p in d["curve"]] == [0, 1, 3] and d["stop_step"] == 4


def test_the_record_says_why_nothing_was_skipped():
    single = guidance.RunRecord(steps=4, evaluations=4, single_pass=4, rows_computed=4, rows_full_cfg=4)
    assert single.saved_fraction == 0.0 and "cfg = 1" in single.note and "no second pass" in single.note
    other = guidance.RunRecord(evaluations=4, other_guiders=4)
    assert "more than two conditionings" in other.note
    full = guidance.RunRecord(evaluations=4, guided=4)
    assert "inside the guidance window" in full.note
    assert guidance.RunRecord(evaluations=4, guided=2, skipped_passes=2).note == ""
