"""Live acquisition: a detector's own network stream (Merlin TCP, DECTRIS SIMPLON ZeroMQ stream v1 and Stream V2)
as a streaming source of the engine (``LiveSource``), with every frame accounted for, and a simulator that replays
any source as that detector sends it (``serve``)."""

from stempress.live.accounting import FrameAccount
from stempress.live.receiver import LiveSource, open_live

__all__ = ["FrameAccount", "LiveSource", "open_live"]
