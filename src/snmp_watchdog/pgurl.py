"""``postgresql://`` store URLs: parsing what the configuration needs, and redaction.

Pure string handling, so the configuration can check a URL without psycopg
installed. A password never appears in a message: ``redact`` replaces it,
and the configuration takes it from ``password_file`` or ``${ENV}`` instead
of the URL anyway.
"""

from __future__ import annotations

import urllib.parse

SCHEMES = ("postgresql", "postgres")


def is_postgresql(url: str) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URL."""
    return urllib.parse.urlsplit(url).scheme in SCHEMES


def redact(url: str) -> str:
    """The URL with any password (in the authority or the query) replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostport}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(k == "password" for k, _ in pairs):
            query = "&".join(
                f"{k}=***" if k == "password" else urllib.parse.urlencode({k: v}) for k, v in pairs
            )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def has_password(url: str) -> bool:
    """True when the URL itself carries a password."""
    return redact(url) != url


def scrub(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***``."""
    return text.replace(secret, "***") if secret else text
