"""The data the store keeps."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Item:
    sku: str
    name: str
    price: float
    quantity: int = 0
    tags: tuple[str, ...] = ()

    @property
    def value(self) -> float:
        """What the items of this kind in stock are worth."""
        return self.price * self.quantity

    def restocked(self, amount: int) -> Item:
        if amount <= 0:
            raise ValueError(f"restock amount must be positive, got {amount}")
        return Item(self.sku, self.name, self.price, self.quantity + amount, self.tags)


@dataclass
class Order:
    order_id: int
    lines: dict[str, int] = field(default_factory=dict)  # sku -> quantity

    def add(self, sku: str, quantity: int = 1) -> None:
        self.lines[sku] = self.lines.get(sku, 0) + quantity

    def total_quantity(self) -> int:
        return sum(self.lines.values())
