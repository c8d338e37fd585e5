"""A tiny inventory: items, a store that holds them, and reports over the store."""

from .models import Item, Order
from .store import Store

__all__ = ["Item", "Order", "Store"]
