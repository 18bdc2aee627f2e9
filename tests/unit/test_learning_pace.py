"""LearningPace: how often a pooled upstream connection learns a response head when the heads it
learnt do not come back (upstream_conn.KnownHead), fed sequences of responses."""

from itertools import pairwise

from upsync.proxy.upstream_conn import LearningPace


def learnt(pace: LearningPace, misses: int) -> list[int]:
    """Which of `misses` responses in a row, none repeating the known head, are learnt."""
    return [n for n in range(misses) if pace.worth_learning()]


def test_heads_that_never_come_back_are_learnt_ever_more_rarely_down_to_one_in_65() -> None:
    pace = LearningPace()
    chosen = learnt(pace, 400)
    gaps = [later - earlier for earlier, later in pairwise(chosen)]
    assert chosen[:3] == [0, 3, 8]  # intervals of 2 then 4 skipped responses
    assert gaps == sorted(gaps)  # never more often again while nothing comes back
    assert gaps[-1] == 65 and gaps.count(65) >= 2  # the cap: one response in 65


def test_a_head_that_came_back_makes_the_next_new_one_learnt_at_once() -> None:
    pace = LearningPace()
    learnt(pace, 200)  # far into the slow pace
    pace.matched = True  # the known head was read again
    assert pace.worth_learning()  # the next new head (the next second's Date) is learnt
    # and the pace starts over: a head that does not come back is followed soon
    assert learnt(pace, 4) == [0, 3]


def test_a_learnt_head_that_keeps_coming_back_keeps_each_new_head_learnt() -> None:
    pace = LearningPace()
    for _ in range(50):
        pace.matched = True
        assert pace.worth_learning()
