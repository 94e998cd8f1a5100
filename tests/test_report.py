"""What a person reads at a glance: the run's headline and the progress card's line."""

from __future__ import annotations

from etl.summary import import_headline
from tasks.report import progress_line


def test_the_headline_names_the_counts_and_the_verdict():
    assert import_headline({"messages_sent": 2879, "rejected": 2, "missing": 0, "verdict": "complete"}) == \
        "2879 sent · 2 rejected · 0 missing · complete"
    assert import_headline({"messages_sent": 5, "messages_edited": 1, "messages_failed": 2, "rejected": 0,
                            "missing": 3, "quarantined": {"c": "ambiguous contact"}, "verdict": "incomplete",
                            "lookback": [{"outcome": "unchanged"}, {"outcome": "imported"}]}) == \
        "5 sent · 1 edited · 2 failed · 0 rejected · 3 missing · 1 quarantined · 1 earlier days again · incomplete"
    assert import_headline({"dry_run": True, "verdict": "incomplete"}).endswith("· dry run")


def test_progress_says_rows_of_total_rate_and_time_left():
    assert progress_line(12_000, 50_000, 20.0) == "12,000 of 50,000 source rows · 600 rows/s · about 1 min 4 s left"
    assert progress_line(900, 1_000, 3.0) == "900 of 1,000 source rows · 300 rows/s · about 1 s left"
    assert progress_line(1_000, 1_000, 4.0) == "1,000 of 1,000 source rows · 250 rows/s"
    assert progress_line(0, 1_000, 0.0) == "0 of 1,000 source rows"
