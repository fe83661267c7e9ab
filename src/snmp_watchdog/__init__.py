"""snmp-watchdog: poll TCP services, send SNMP notifications on confirmed state changes."""

__version__ = "0.1.0.dev0"
