"""Process-wide memory budgets for inbound data.

Every listener caps a single message before reading it, but a peer may announce a message
under the cap and then send it slowly; many such peers together could still hold a lot of
memory. A listener therefore reserves each announced payload against one shared budget
before reading it and releases it when the message is complete or the connection ends. A
reservation that does not fit is refused, and the listener drops that one connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ByteBudget:
    capacity: int
    name: str = "inbound"
    used: int = field(default=0, init=False)

    def try_reserve(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (nothing reserved) when that would exceed the budget.

        Greenlets never switch inside this method, so no lock is needed.
        """
        if n < 0:
            raise ValueError("cannot reserve a negative size")
        if self.used + n > self.capacity:
            return False
        self.used += n
        return True

    def release(self, n: int) -> None:
        self.used = max(0, self.used - n)
