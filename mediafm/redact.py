"""What messages, logs and dead letters never show: the secrets of a URL (scheme://user:password@host, a token as
its user, a presigned URL's signature and token).

URIs arrive in messages and settings (a media URI, openai_base_url) and are echoed back in errors, so that a
person can see what was wrong; the password in one is masked wherever it is echoed. Keys themselves are never
settings (openai_api_key_env names the variable), and text a server sends back is scrubbed of the key by the
encoder that holds it (mediafm/media/encoders.py).
"""

from __future__ import annotations

import re

_WORD_END = re.compile(r"\s")
_SECRET_PARAM = re.compile(r"([?&;])([^=&#;?\s]{1,256})=([^&#\s]*)")
"""A query parameter: its name (up to 256 characters, no separator in it: each try scans one run between
separators, so a text of megabytes costs linear time) and its value."""
_SECRET_NAMES = ("sig", "token", "key", "secret", "passw", "pwd", "credential", "auth", "session")
"""Words in a parameter's name that say its value is a secret: a presigned URL's X-Amz-Signature, X-Amz-Credential
and X-Amz-Security-Token, an Azure SAS's sig, api_key, access_token, ..."""


def _mask_userinfo(info: str) -> str | None:
    """What to write for what runs from a URL's '//' to the last '@' of its word; None: nothing to hide there."""
    if ":" not in info and "/" in info:  # an @ in the path of a URL with no user
        return None
    user = info.split(":", 1)[0] if ":" in info else ""
    keep = user if user and not any(c in user for c in "/?#@") else ""
    return f"{keep}:***" if keep else "***"  # a user name alone may be the token


def _mask_userinfos(text: str) -> str:
    """In each word holding '//', what runs from its first '//' to the last '@' of the word (a password may hold
    '/', '?', '#' or '@': an AWS secret key often has '/', so the authority's own rules do not find where it ends).
    Each word is looked at once (str.find, rfind): linear in the text. A pattern with an optional scheme before
    '//' (the first of 2026-12-08) backtracked over every run of letters, and one dead letter's reason of 3 MB held
    a worker's event loop for minutes."""
    out, at = [], 0
    while (i := text.find("//", at)) >= 0:
        m = _WORD_END.search(text, i)
        end = m.start() if m else len(text)
        last = text.rfind("@", i + 2, end)
        masked = _mask_userinfo(text[i + 2:last]) if last >= 0 else None
        out.append(text[at:end] if masked is None else f"{text[at:i + 2]}{masked}{text[last:end]}")
        at = end
    out.append(text[at:])
    return "".join(out)


def _mask_param(m: re.Match) -> str:
    name = m.group(2).lower()
    return f"{m.group(1)}{m.group(2)}=***" if any(w in name for w in _SECRET_NAMES) else m.group(0)


def redact_url(text: str) -> str:
    """`text` with the secrets of every URL in it masked: the password (http://user:secret@host/x ->
    http://user:***@host/x), a user name with no password (https://TOKEN@host -> https://***@host), and the values
    of query parameters named for a secret (?X-Amz-Signature=*** ...). Linear in the text's length."""
    return _SECRET_PARAM.sub(_mask_param, _mask_userinfos(text))
