"""The one reuse rule: a buffer is written again only when nothing references it and no copy reads it."""

from __future__ import annotations

import pytest
import torch

from zcopy_data.memory.reuse import Reusable, ReusePool


class _Event:
    """A stand-in for a device copy's event on a machine without one: done when told."""

    def __init__(self) -> None:
        self.done = False

    def query(self) -> bool:
        return self.done


def test_a_buffer_is_free_once_its_views_are_gone_and_its_copy_is_done() -> None:
    buf = torch.zeros(8)
    r = Reusable([buf])
    assert r.is_free()
    view = buf[1:3]
    assert r.referenced() and not r.is_free()
    del view
    event = _Event()
    r.wait_for(event)
    assert r.copying() and not r.is_free()
    event.done = True
    assert r.is_free() and r.event is None


def test_a_pool_reuses_free_buffers_per_shape_and_never_a_held_one() -> None:
    pool = ReusePool(lambda shape, dtype: torch.empty(shape, dtype=dtype), per_key=2)
    a = pool.take((4,), torch.float32)
    ptr = a.data_ptr()
    del a
    b = pool.take((4,), torch.float32)
    assert b is not None and b.data_ptr() == ptr  # freed: handed out again
    c = pool.take((4,), torch.float32)
    d = pool.take((4,), torch.float32)  # both pooled buffers held: a fresh, unpooled one
    assert c is not None and d is not None
    assert len({b.data_ptr(), c.data_ptr(), d.data_ptr()}) == 3
    assert pool.nbytes == 2 * 16
    other = pool.take((4,), torch.int64)
    assert other is not None and other.dtype == torch.int64


def test_without_overflow_a_full_key_gives_none_and_old_keys_are_dropped() -> None:
    pool = ReusePool(lambda s, d: torch.empty(s, dtype=d), per_key=1, keys=2, overflow=False)
    held = pool.take((2,), torch.uint8)
    assert pool.take((2,), torch.uint8) is None
    for n in (3, 4):
        assert pool.take((n,), torch.uint8) is not None
    assert pool.nbytes == 3 + 4  # the (2,) key was the least recently used: dropped
    assert held is not None
    with pytest.raises(ValueError, match="per_key=0"):
        ReusePool(lambda s, d: torch.empty(s, dtype=d), per_key=0)
