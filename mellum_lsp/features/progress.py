"""Server-initiated `window/workDoneProgress`: begin / report / end around long work (model
loading, indexing), only when the client says it supports it. Offers `Progress`, `Report`."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from lsprotocol import types

log = logging.getLogger(__name__)


class Report:
    """Sends progress reports; set `end_message` for the final notification."""

    def __init__(self, server: Any, token: str | None) -> None:
        self.server, self.token = server, token
        self.end_message: str | None = None

    def __call__(self, message: str, percentage: int | None = None) -> None:
        if self.token is not None:
            self.server.work_done_progress.report(
                self.token, types.WorkDoneProgressReport(message=message, percentage=percentage)
            )


class Progress:
    def __init__(self, server: Any) -> None:
        self.server = server

    def supported(self) -> bool:
        caps = getattr(self.server.protocol, "client_capabilities", None)
        return bool(getattr(getattr(caps, "window", None), "work_done_progress", False))

    @contextlib.asynccontextmanager
    async def __call__(self, title: str, message: str | None = None) -> AsyncIterator[Report]:
        """`async with progress("Indexing") as report: report("12 files")`; without client support
        the reports go nowhere."""
        token = None
        if self.supported():
            token = f"mellum-{uuid.uuid4().hex[:12]}"
            try:
                await self.server.work_done_progress.create_async(token)
            except Exception as e:  # the client refused: work without a progress bar
                log.info("progress not available: %s", e)
                token = None
        report = Report(self.server, token)
        if token is not None:
            self.server.work_done_progress.begin(
                token, types.WorkDoneProgressBegin(title=title, message=message, cancellable=False)
            )
        try:
            yield report
        finally:
            if token is not None:
                self.server.work_done_progress.end(
                    token, types.WorkDoneProgressEnd(message=report.end_message)
                )
