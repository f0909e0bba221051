"""Choosing a dyno port base that nothing on this host holds
(selfhost.platform.runtime.network.free_port_base): what the tests and the benchmarks
give their platforms, so that they run beside a developer's own platform."""

from __future__ import annotations

import socket

from selfhost.platform.runtime.network import free_port_base


def test_a_base_with_a_port_held_in_its_span_is_passed_over() -> None:
    with socket.socket() as gone:
        gone.bind(("127.0.0.1", 0))
        freed = gone.getsockname()[1]  # free again once closed (it never listened)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        held = probe.getsockname()[1]  # in use (bound) while the socket lives
        assert free_port_base(1, [held, freed]) == freed
        assert free_port_base(1, [held]) is None
        assert free_port_base(4, [held - 3]) is None  # the span's last port is held
