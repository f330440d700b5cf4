"""A shared-memory segment's header: single-writer cells both processes read the same way."""

from __future__ import annotations

import torch

from zcopy_data.memory.segment import HEADER_BYTES, Header, tensor_over


def test_the_hand_off_protocol_in_order() -> None:
    storage = torch.UntypedStorage(HEADER_BYTES + 64).fill_(0)  # a new segment is zeroed
    worker, main = Header.of(storage), Header.of(storage)  # the same cells, seen by either side
    assert worker.received_all() and not worker.acked and not main.dropped
    worker.mark_sent()
    worker.mark_sent()
    assert not worker.received_all()
    main.ack()
    main.mark_released()
    assert worker.acked and not worker.received_all()
    main.mark_released()
    assert worker.received_all()
    worker.mark_dropped()
    assert main.dropped


def test_tensor_over_views_a_storage_without_copying() -> None:
    storage = torch.UntypedStorage(HEADER_BYTES + 6 * 4)
    t = tensor_over(storage, HEADER_BYTES, (2, 3), torch.float32)
    t.copy_(torch.arange(6.0).reshape(2, 3))
    assert t.untyped_storage().data_ptr() == storage.data_ptr()
    assert t.data_ptr() == storage.data_ptr() + HEADER_BYTES and t.is_contiguous()
    again = tensor_over(storage, HEADER_BYTES, (6,), torch.float32)
    assert again.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert tensor_over(storage, HEADER_BYTES, (0, 3), torch.float32).shape == (0, 3)
