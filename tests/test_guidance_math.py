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
    first, stop = 0, 2  # steps 0 and 1 guided
    # heun's step 1 evaluates at 5.0 (guided) then at 2.0 = the next step's sigma (not guided)
    assert guidance.in_window(5.0, schedule, first, stop)
    assert not guidance.in_window(2.0, schedule, first, stop)


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


def test_accounting_saved_fraction():
    acc = guidance.Accounting(rows_computed=30, rows_full_cfg=40)
    assert acc.saved_fraction == pytest.approx(0.25)
    assert guidance.Accounting().saved_fraction == 0.0
    assert set(acc.as_dict()) >= {"evaluations", "skipped_passes", "saved_fraction", "curve", "stop_step"}
