"""What messages, logs and dead letters never show: the secrets of a URL (scheme://user:password@host, a token as
its user, a presigned URL's signature and token).

URIs arrive in messages and settings (a media URI, openai_base_url) and are echoed back in errors, so that a
person can see what was wrong; the password in one is masked wherever it is echoed. Keys themselves are never
settings (openai_api_key_env names the variable), and text a server sends back is scrubbed of the key by the
encoder that holds it (mediafm/media/encoders.py).
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)(\S*)@")
"""A URL's scheme and what runs to the last @ of its word: a password may hold '/', '?', '#' or '@' (an AWS secret
key often has '/'), so the authority's own rules do not find where it ends."""
_SECRET_PARAM = re.compile(r"([?&;][^=&#\s]*(?:sig|token|key|secret|passw|pwd|credential|auth|session)[^=&#\s]*=)"
                           r"[^&#\s]*", re.IGNORECASE)
"""A query parameter whose name says it holds a secret: a presigned URL's X-Amz-Signature, X-Amz-Credential and
X-Amz-Security-Token, an Azure SAS's sig, api_key, access_token, ..."""


def _mask_userinfo(m: re.Match) -> str:
    scheme, info = m.group(1), m.group(2)
    if ":" not in info and "/" in info:  # an @ in the path of a URL with no user: nothing to hide
        return m.group(0)
    user = info.split(":", 1)[0] if ":" in info else ""
    keep = user if user and not any(c in user for c in "/?#@") else ""
    return f"{scheme}{keep}:***@" if keep else f"{scheme}***@"  # a user name alone may be the token


def redact_url(text: str) -> str:
    """`text` with the secrets of every URL in it masked: the password (http://user:secret@host/x ->
    http://user:***@host/x), a user name with no password (https://TOKEN@host -> https://***@host), and the values
    of query parameters named for a secret (?X-Amz-Signature=*** ...)."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(_mask_userinfo, text))
