"""Where blocks go: the archive writer, the event writers, the reducer set, the statistics pass and the
bit-exact reference check, all behind one protocol (``sinks.protocol``)."""

from stempress.sinks.protocol import MergeableSink, RunInfo, Sink

__all__ = ["MergeableSink", "RunInfo", "Sink"]
