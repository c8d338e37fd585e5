"""The store: items by SKU, with lookups and order fulfilment."""

from __future__ import annotations

from collections.abc import Iterator

from .models import Item, Order


class OutOfStock(Exception):
    def __init__(self, sku: str, wanted: int, available: int) -> None:
        super().__init__(f"{sku}: wanted {wanted}, only {available} in stock")
        self.sku, self.wanted, self.available = sku, wanted, available


class Store:
    def __init__(self) -> None:
        self._items: dict[str, Item] = {}

    def add(self, item: Item) -> None:
        self._items[item.sku] = item

    def remove(self, sku: str) -> Item:
        return self._items.pop(sku)

    def get(self, sku: str) -> Item | None:
        return self._items.get(sku)

    def __iter__(self) -> Iterator[Item]:
        return iter(sorted(self._items.values(), key=lambda item: item.sku))

    def __len__(self) -> int:
        return len(self._items)

    def find(self, tag: str) -> list[Item]:
        """Items carrying `tag`, by SKU."""
        return [item for item in self if tag in item.tags]

    def total_value(self) -> float:
        return sum(item.value for item in self)

    def fulfil(self, order: Order) -> None:
        """Take an order's items out of stock, all or nothing."""
        for sku, quantity in order.lines.items():
            item = self._items.get(sku)
            available = item.quantity if item else 0
            if available < quantity:
                raise OutOfStock(sku, quantity, available)
        for sku, quantity in order.lines.items():
            item = self._items[sku]
            self._items[sku] = Item(item.sku, item.name, item.price, item.quantity - quantity, item.tags)
