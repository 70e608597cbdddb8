"""What messages, logs and dead letters never show: the password of a URL (scheme://user:password@host).

URIs arrive in messages and settings (a media URI, openai_base_url) and are echoed back in errors, so that a
person can see what was wrong; the password in one is masked wherever it is echoed. Keys themselves are never
settings (openai_api_key_env names the variable), and text a server sends back is scrubbed of the key by the
encoder that holds it (mediafm/media/encoders.py).
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(//[^/?#@\s:]*):[^/?#\s]*@")  # the password runs to the last @ of the authority


def redact_url(text: str) -> str:
    """`text` with the password of every URL in it masked: http://user:secret@host/x -> http://user:***@host/x."""
    return _USERINFO.sub(r"\1:***@", text)
