"""The bulk replay's garbage-collector pause."""

import gc
from collections.abc import Iterator

import pytest

from jobstream.projections._fold import collector_paused


@pytest.fixture
def collector_enabled() -> Iterator[None]:
    gc.enable()
    yield
    gc.enable()


@pytest.mark.usefixtures("collector_enabled")
def test_the_collector_is_off_in_the_block_and_on_again_after() -> None:
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


@pytest.mark.usefixtures("collector_enabled")
def test_the_collector_is_on_again_after_a_block_that_raised() -> None:
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("the database refused a row")
    assert gc.isenabled()


@pytest.mark.usefixtures("collector_enabled")
def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()
