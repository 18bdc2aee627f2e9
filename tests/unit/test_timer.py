import asyncio

from upsync.proxy.timer import CoarseTimeouts


def test_coarse_timeouts_fire_late_by_at_most_the_resolution_and_never_after_discard() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fired: dict[str, float] = {}
        everything = asyncio.Event()

        def expired(key: str) -> None:
            fired[key] = loop.time()
            if len(fired) == 2:
                everything.set()

        timeouts: CoarseTimeouts[str] = CoarseTimeouts(loop, 0.05, expired)
        start = loop.time()
        timeouts.add("quick", 0.1)
        timeouts.add("slow", 0.3)
        timeouts.add("heard from", 0.1)
        timeouts.add("no timeout", 0)
        timeouts.discard("heard from")
        await asyncio.wait_for(everything.wait(), 5)
        assert set(fired) == {"quick", "slow"}
        assert 0.1 <= fired["quick"] - start < 0.1 + 0.05 + 0.05  # resolution, plus loop slack
        assert 0.3 <= fired["slow"] - start < 0.3 + 0.05 + 0.05
        assert timeouts._ticker is None  # nothing pending: no timer left ticking

    asyncio.run(scenario())
