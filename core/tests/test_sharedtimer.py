"""midway.sharedtimer: one timer, many deadlines."""

from __future__ import annotations

import asyncio

from midway.sharedtimer import SharedTimer


class Item:
    def __init__(self, name: str, due: float, log: list[str], done: asyncio.Event) -> None:
        self.name, self.due, self.log, self.done = name, due, log, done

    def check(self, now: float) -> float | None:
        if now < self.due:
            return self.due
        self.log.append(self.name)
        if self.name == "last":
            self.done.set()
        return None


def test_one_timer_checks_each_item_by_its_deadline_and_forgets_what_is_done() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        log: list[str] = []
        done = asyncio.Event()
        timer: SharedTimer[Item] = SharedTimer(Item.check)
        now = loop.time()
        items = {name: Item(name, now + delay, log, done)
                 for name, delay in (("later", 0.06), ("first", 0.02), ("last", 0.1),
                                     ("gone", 0.04))}
        for name in ("later", "first", "last", "gone"):
            timer.watch(items[name], items[name].due, loop)
        # re-armed for the earliest: one timer, due with "first"
        assert timer.due == items["first"].due and len(timer.waiting) == 4
        timer.discard(items["gone"])
        await asyncio.wait_for(done.wait(), 5)
        assert log == ["first", "later", "last"]  # in deadline order, "gone" never checked late
        assert not timer.waiting and timer.timer is None

        late = Item("never", loop.time() + 0.01, log, done)
        timer.watch(late, late.due, loop)
        timer.cancel()
        assert timer.timer is None and not timer.waiting

    asyncio.run(main())


def test_slack_fires_ahead_of_the_deadline() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timer: SharedTimer[str] = SharedTimer(lambda item, now: None, slack=0.5)
        due = loop.time() + 10
        timer.watch("x", due, loop)
        assert timer.timer is not None and abs(timer.timer.when() - (due - 0.5)) < 1e-9
        timer.cancel()

    asyncio.run(main())
