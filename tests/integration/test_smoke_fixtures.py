import asyncpg

from jobstream.events import Bus


async def test_fixtures_give_real_servers(bus: Bus, database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM jobstream.jobs") == 0
    finally:
        await conn.close()
    assert await bus.stream_last_seq() == 0
