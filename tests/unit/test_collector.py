"""The event processes' collector settings (`cli._runtime.tune_collector`)."""

import gc
import weakref
from collections.abc import Iterator

import pytest

from jobstream.cli._runtime import YOUNG_COLLECTION_THRESHOLD, tune_collector


@pytest.fixture
def collector_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_start_up_objects_are_frozen_and_the_young_generation_collected_less_often(
    collector_restored: None,
) -> None:
    _, middle, oldest = gc.get_threshold()
    tune_collector()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, middle, oldest)
    assert gc.isenabled()


def test_cycles_made_after_start_up_are_still_collected(collector_restored: None) -> None:
    tune_collector()

    class Node:
        def __init__(self) -> None:
            self.me = self

    node = Node()
    alive = weakref.ref(node)
    del node
    assert alive() is not None  # a cycle: reference counts alone do not free it
    gc.collect()
    assert alive() is None
