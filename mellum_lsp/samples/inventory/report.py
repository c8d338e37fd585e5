"""Reports over a store's stock."""

from __future__ import annotations

from .models import Item
from .store import Store


def low_stock(store: Store, threshold: int = 5) -> list[Item]:
    """Items with fewer than `threshold` in stock."""
    return [item for item in store if item.quantity < threshold]


def value_by_tag(store: Store) -> dict[str, float]:
    totals: dict[str, float] = {}
    for item in store:
        for tag in item.tags:
            totals[tag] = totals.get(tag, 0.0) + item.value
    return totals
