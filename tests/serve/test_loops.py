"""The server's event loop (serve/loops.py): uvloop by default, asyncio's on request, and a
clear error when uvloop is asked for but missing."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop
from click.testing import CliRunner

from ganserve.serve import loops
from ganserve.serve.cli import main
from ganserve.serve.config import EventLoop


def _made(choice: EventLoop) -> asyncio.AbstractEventLoop:
    loop = loops.loop_factory(choice)()
    loop.close()
    return loop


def test_auto_and_uvloop_run_on_uvloop() -> None:
    for choice in (EventLoop.AUTO, EventLoop.UVLOOP):
        loop = _made(choice)
        assert isinstance(loop, uvloop.Loop)
        assert loops.loop_name(loop) == "uvloop"


def test_asyncio_runs_on_asyncios_own_loop() -> None:
    loop = _made(EventLoop.ASYNCIO)
    assert not isinstance(loop, uvloop.Loop)
    assert loops.loop_name(loop) == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert loops.loop_name(_made(EventLoop.AUTO)) == "asyncio"
    with pytest.raises(ValueError, match="uvloop is not installed: pip install uvloop"):
        loops.loop_factory(EventLoop.UVLOOP)
    result = CliRunner().invoke(main, ["serve", "--event-loop", "uvloop"])
    assert result.exit_code == 2
    assert "event_loop is uvloop, but uvloop is not installed" in result.output
    assert "Traceback" not in result.output


def test_in_process_servers_run_on_the_loop_their_config_names(start_server) -> None:
    for choice, name in ((EventLoop.AUTO, "uvloop"), (EventLoop.ASYNCIO, "asyncio")):
        server = start_server(event_loop=choice)
        assert loops.loop_name(server.loop) == name
