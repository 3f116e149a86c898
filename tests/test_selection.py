"""Tier 1: reading the token / step selections of the attention views (shapefirst.selection)."""

from __future__ import annotations

import pytest

from shapefirst.selection import SelectionError, parse_numbers, select_steps, select_tokens
from shapefirst.tokens import EOS, PAD, SEM, SOS

ROLES = [SOS, SEM, SEM, SEM, EOS, PAD, PAD, PAD]


@pytest.mark.parametrize("text, expected", [
    ("3", [3]), ("0, 2-5, 9", [0, 2, 3, 4, 5, 9]), (" 7 - 5 ", [7, 6, 5]), ("4,4, 2-4", [4, 2, 3]),
    ("1,,2,", [1, 2]), ("06", [6]), ("2-2", [2])])
def test_numbers_and_ranges(text, expected):
    assert parse_numbers("tokens", text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "tokens is empty"), (" , ,", "tokens is empty"), (None, "tokens is empty"),
    ("-1", r"cannot read '-1'"), ("2-", r"cannot read '2-'"), ("a, 3", r"cannot read 'a'"), ("1.5", "cannot read"),
    ("1 2", r"cannot read '1 2'"), ("0-99999999", "too long")])
def test_garbage_is_a_value_error_saying_what_to_write(text, message):
    with pytest.raises(SelectionError, match=message) as info:
        parse_numbers("tokens", text)
    assert isinstance(info.value, ValueError)


def test_auto_tokens_are_sos_the_words_and_the_first_eos_within_the_kept_positions():
    assert select_tokens("auto", ROLES, kept=8) == [0, 1, 2, 3, 4]
    assert select_tokens("  AUTO ", ROLES, kept=3) == [0, 1, 2]
    assert select_tokens("", [PAD, PAD], kept=2) == [0]  # nothing to pick: position 0


def test_listed_tokens_are_checked_against_the_prompt_and_the_kept_maps():
    assert select_tokens("5, 0, 5", ROLES, kept=8) == [5, 0]
    with pytest.raises(SelectionError, match=r"token index 8 is beyond the prompt: it has 8 positions \(0-7\)"):
        select_tokens("2, 8", ROLES, kept=8)
    with pytest.raises(SelectionError, match=r"token index 6 was not kept: .* positions 0-4\. Raise max_tokens"):
        select_tokens("6", ROLES, kept=5)


def test_auto_steps_spread_over_the_run_with_first_and_last():
    recorded = list(range(0, 20, 2))
    assert select_steps("auto", recorded) == [0, 4, 8, 10, 14, 18]
    assert select_steps("auto", [3, 4]) == [3, 4]
    assert select_steps("auto", recorded, auto_count=1) == [18]
    assert select_steps("ALL", recorded) == recorded


def test_listed_steps_must_have_been_recorded():
    with pytest.raises(SelectionError, match=r"step 1 was not recorded; recorded steps: 0, 2, 4\. Use 'auto'"):
        select_steps("4, 0-2", [0, 2, 4])
    assert select_steps("4, 2", [0, 2, 4]) == [4, 2]
    with pytest.raises(SelectionError, match="no step was recorded"):
        select_steps("auto", [])
