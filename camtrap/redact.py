"""The one redaction: what of a URI, a message or a stored config may be shown to a user.

A URI may carry credentials (a presigned query string, `user:password@`); an S3 library's error
text may name the endpoint and an access key id. Every message, log line, dump (run.json, model
files, resume state, Prefect cache keys) and repr goes through here before it is shown."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "REDACTED"
# A URI inside a message, without the punctuation that usually follows one there.
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,:;)\]]")
_URL = re.compile(r"https?://\S+")
_ACCESS_KEY = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{12,}\b")
# The config settings that hold a URI of the user's (model.weights, model.init_from).
URI_SETTINGS = ("weights", "init_from")
EXCERPT_CHARS = 80  # the most an error quotes of a value from a user's file


def redact_uri(uri: str) -> str:
    """`uri` without its secrets: user info (`user:password@`) and the values of its query
    string and fragment (a presigned URL's signature and token) become REDACTED; the scheme,
    host, path and query keys stay, so the file is still recognisable. Plain paths and names
    are returned as they are."""
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:  # not parseable (e.g. an unclosed "[" in the host): hide all after ://
        return uri.partition("://")[0] + "://" + REDACTED
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return uri  # nothing secret: left byte for byte as given
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query, fragment = _redact_pairs(parts.query), _redact_pairs(parts.fragment)
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _redact_pairs(text: str) -> str:
    """`a=1&b=2` -> `a=REDACTED&b=REDACTED`; a part without `=` may itself be a token."""
    if not text:
        return text
    pairs = (part.partition("=") for part in text.split("&"))
    return "&".join(f"{key}={REDACTED}" if sep else REDACTED for key, sep, _ in pairs)


def redact_text(text: str) -> str:
    """`text` (an error message, a log line) with every URI in it redacted (`redact_uri`)."""
    return _URI_IN_TEXT.sub(lambda match: redact_uri(match.group(0)), text)


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text`, a value from a user's file quoted in an error, redacted (URIs' secrets, access key
    ids) and cut to `limit` characters, the last one "…": an error never echoes a whole line of
    a file, nor a credential in it."""
    shown = _ACCESS_KEY.sub("<key>", redact_text(text))
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def redact_endpoints(text: str) -> str:
    """A storage library's error text without endpoints (`<endpoint>`) and access key ids
    (`<key>`): the S3 endpoint and the credentials in use never appear in camtrap's messages."""
    return _ACCESS_KEY.sub("<key>", _URL.sub("<endpoint>", text))


def redact_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config dump with its URI settings redacted, also when it did not come from RunConfig's
    own (redacting) dump: what a model file stores."""
    model = config.get("model")
    if not isinstance(model, dict):
        return config
    shown = {k: redact_uri(v) if k in URI_SETTINGS and isinstance(v, str) else v
             for k, v in model.items()}  # fmt: skip
    return {**config, "model": shown}
