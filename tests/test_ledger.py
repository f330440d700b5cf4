"""The copy ledger: records aggregated per (stage, field, reason), captured per thread, in order."""

from __future__ import annotations

import threading

from zcopy_data.ledger import COLLATE, PIN, CopyLedger, LedgerRow, capture, record, record_all


def test_rows_aggregate_records_in_first_seen_order() -> None:
    ledger = CopyLedger()
    ledger.add(COLLATE, "x", "gather", copied=10)
    ledger.add(PIN, "x", "skipped", viewed=10)
    ledger.add(COLLATE, "x", "gather", copied=5)
    ledger.extend(r for r in [(PIN, "x", "skipped", 3, 0), (COLLATE, "y", "view", 7, 0)])
    assert ledger.rows == [
        LedgerRow(COLLATE, "x", "gather", 2, 0, 15),
        LedgerRow(PIN, "x", "skipped", 2, 13, 0),
        LedgerRow(COLLATE, "y", "view", 1, 7, 0),
    ]
    assert (ledger.bytes_copied, ledger.bytes_viewed, ledger.copied(COLLATE)) == (15, 20, 15)
    ledger.rows[0].events = 99  # rows are copies
    assert ledger.rows[0].events == 2
    ledger.reset()
    assert ledger.rows == [] and ledger.bytes_copied == 0


def test_record_all_counts_as_one_record_each_and_reaches_captures() -> None:
    records = [(COLLATE, "ledger-test", "a", 1, 0), (PIN, "ledger-test", "b", 0, 2)]
    with capture() as outer:
        with capture() as inner:
            record_all(records)
            record(COLLATE, "ledger-test", "a", viewed=1)
        record(PIN, "ledger-test", "b", copied=2)
    assert inner == [*records, (COLLATE, "ledger-test", "a", 1, 0)]
    assert outer == [*inner, (PIN, "ledger-test", "b", 0, 2)]
    record(PIN, "ledger-test", "b", copied=2)  # no capture open: the ledger alone
    assert outer[-1] == (PIN, "ledger-test", "b", 0, 2) and len(outer) == 4


def test_a_capture_sees_only_its_own_thread() -> None:
    def other() -> None:
        record(COLLATE, "ledger-test", "other thread", viewed=1)

    with capture() as mine:
        t = threading.Thread(target=other)
        t.start()
        t.join()
        record(COLLATE, "ledger-test", "this thread", viewed=1)
    assert [r[2] for r in mine] == ["this thread"]
