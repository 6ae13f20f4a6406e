"""benchlib.sequence_tally: loss told, loss silent (with and without a gap in the offsets), loss at
the end, and duplicates, counted by the payloads' sequence numbers."""

from __future__ import annotations

from benchlib.sequence_tally import Data, Frame, Tally, Told, tally


def test_every_message_once_in_order() -> None:
    frames = [Data(seq, seq + 10) for seq in range(5, 9)]
    assert tally(frames, last_sent=8) == Tally(received=4)


def test_a_gap_after_a_restarted_or_skipped_frame_is_reported() -> None:
    frames: list[Frame] = [Data(1, 1), Data(2, 2), Told("restarted"), Data(6, 1), Told("skipped"), Data(8, 3)]
    assert tally(frames, last_sent=8) == Tally(received=4, lost_reported=4)


def test_a_silent_gap_tells_whether_the_offsets_have_one_too() -> None:
    frames = [Data(1, 1), Data(4, 2), Data(5, 3), Data(7, 6)]
    found = tally(frames, last_sent=7)
    assert found == Tally(received=4, lost_silent=3, lost_silent_no_offset_gap=2)
    assert found.lost == 3


def test_what_never_came_after_the_last_received_is_lost_at_the_end() -> None:
    found = tally([Data(1, 1), Data(2, 2)], last_sent=5)
    assert found == Tally(received=2, lost_at_end=3)
    assert found.lost == 3


def test_a_message_twice_is_a_duplicate_and_a_late_one_fills_its_gap() -> None:
    frames = [Data(1, 1), Data(3, 2), Data(2, 3), Data(3, 4), Data(4, 5)]
    assert tally(frames, last_sent=4) == Tally(received=4, duplicated=1)


def test_tallies_add_up() -> None:
    assert Tally(received=1, lost_reported=2) + Tally(received=3, duplicated=1) == Tally(
        received=4, duplicated=1, lost_reported=2
    )
    assert Tally(received=2, lost_at_end=1).as_dict()["lost_at_end"] == 1


def test_silent_loss_after_a_rejoin_is_counted_apart() -> None:
    frames = [Data(1, 1, at=10), Data(3, 2, at=20), Data(6, 3, at=40), Data(8, 4, at=60)]
    found = tally(frames, last_sent=8, kills=[15, 50], rejoins=[30])
    assert found.lost_silent == 4
    assert found.lost_silent_at_rejoins == 2


def test_the_offsets_of_duplicates_count_for_the_gap_after_them() -> None:
    frames = [Data(1, 1), Data(2, 2), Data(1, 3), Data(5, 4)]
    assert tally(frames, last_sent=5) == Tally(
        received=3, duplicated=1, lost_silent=2, lost_silent_no_offset_gap=2
    )
