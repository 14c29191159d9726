"""The scheduler daemon: keeps stream tables fresh without anyone calling refresh.

Modules: :mod:`.schedule` (schedules and due times), :mod:`.dag` (dependency order, diamonds),
:mod:`.leases` (leases and heartbeat rows), :mod:`.daemon` (the loop), :mod:`.process`
(``pgtrickle scheduler start|stop``: pid and log files), :mod:`.metrics` (Prometheus).
See docs/scheduler.md.
"""

from .daemon import Scheduler, TickReport
from .schedule import Schedule, parse

__all__ = ["Schedule", "Scheduler", "TickReport", "parse"]
