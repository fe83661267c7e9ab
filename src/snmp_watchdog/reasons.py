"""The fixed set of reasons a check can report.

Each reason has a stable number: it is what a ``status_dir`` file holds when a
service is down (``0`` means up), and the value of the MIB's reason code
(``WdReasonCode``). Numbers are never reused or renumbered.
"""

from __future__ import annotations

from enum import Enum


class Reason(Enum):
    """Why a check ended the way it did. ``value`` is the stable number."""

    OK = 0
    REFUSED = 1  # nothing listens on the port (RST to our SYN)
    TIMEOUT = 2  # the check's deadline passed
    DNS = 3  # the host name did not resolve
    UNREACHABLE = 4  # no route, network or host unreachable
    RESET = 5  # the server reset an established connection
    CLOSED = 6  # the server closed the connection before the conversation ended
    UNEXPECTED_RESPONSE = 7  # the answer did not match what was expected
    TOO_LARGE = 8  # the server sent more than the check reads (64 KiB)
    TLS = 9  # the TLS handshake or certificate verification failed
    CERTIFICATE_EXPIRING = 10  # the certificate expires within the warning period
    HTTP_STATUS = 11  # an HTTP status outside the accepted ones
    NETWORK_ERROR = 12  # any other socket error (the detail names it)

    @property
    def code(self) -> str:
        """The reason's name as written in logs, ``status --json`` and traps."""
        return self.name.lower()

    @property
    def ok(self) -> bool:
        return self is Reason.OK

    @classmethod
    def from_code(cls, code: str) -> Reason:
        return cls[code.upper()]
