"""Hide secrets in text that is printed, logged or stored (errors, MLflow params, logs).

    redact("postgresql+psycopg://user:s3cret@db:5432/optuna")  -> "postgresql+psycopg://user:***@db:5432/optuna"
    redact("http://:tok@host/x?password=abc&db=1")            -> "http://:***@host/x?password=***&db=1"

The password of a URL's user-info (`scheme://user:password@host`) and the value of a
`password=` / `token=` / `secret=` query or key=value pair are replaced by `***`; the
user, host, port and database stay, so that a message still says which server it means.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@ : the password runs up to the last '@' before the host part
# (a password may itself contain '@' when it was not URL-quoted).
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*):(?P<secret>[^/?#\s]*)@(?=[^@/?#\s]*(?:[/?#\s]|$))")
# key=value pairs (URL query strings, libpq "password=..." strings, ini lines).
_KEYVALUE = re.compile(r"(?P<head>\b\w*(?:password|passwd|pwd|token|secret|api[_-]?key)\w*\s*[=:]\s*['\"]?)"
                       r"(?P<secret>[^\s&;,'\"]+)",
                       re.IGNORECASE)


def redact(text: object) -> str:
    """`text` (anything; str() of it) with every URL password and `password=`-style
    value replaced by `***`."""
    text = str(text)
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@" if m["secret"] else m.group(0), text)
    return _KEYVALUE.sub(lambda m: f"{m['head']}{MASK}", text)
