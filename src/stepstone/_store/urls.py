"""Database URLs as they may be shown: without their password."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_PASSWORD_PARAMETER = re.compile(r"(?i)(^|&)(password=)[^&]*")


def mask_password(url: str) -> str:
    """``url`` with its password, if any (``user:pw@`` or ``?password=``), as ``***``."""
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    if parts.query:
        parts = parts._replace(query=_PASSWORD_PARAMETER.sub(r"\1\2***", parts.query))
    return urlunsplit(parts)


__all__ = ["mask_password"]
