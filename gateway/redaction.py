"""Which config values are secrets, so that neither an error message nor the admin
``/config`` shows them (docs/operations.md#hardening): consumers' API keys, the admin token,
plugin options named like secrets, credential header values, the password of any URL.
Pure functions of names and locations."""

from __future__ import annotations

import re

Loc = tuple[int | str, ...]  # a place in the config: ("routes", 2, "plugins", 0, "secret")

REDACTED = "<redacted>"
# Plugin options whose values are secrets (jwt secret, basic_auth users' hashes, keys, tokens)...
_SECRET_OPTION = re.compile(r"(secret|password|passwd|token|key|private|credential|users)", re.I)
# ...but not these settings: rate_limit's `key` ("consumer", "ip", "header:NAME"), a count, a switch.
_SETTING_NAMES = frozenset({"key", "max_keys", "hide_credentials"})
# Authorization, Proxy-Authorization, Cookie / Set-Cookie, X-Api-Key, X-Auth-Token, ...
_CREDENTIAL_HEADER = re.compile(r"(auth|cookie|token|secret|key|password)", re.I)
# scheme://userinfo@ — the userinfo ends at the last "@" before the path, query or fragment.
_URL_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^/?#@\s'\"<>]*(?:@[^/?#@\s'\"<>]*)*)@")


def secret_option(name: str) -> bool:
    """Whether a plugin option (or a key anywhere under one) with this name holds a secret."""
    return name.lower() not in _SETTING_NAMES and _SECRET_OPTION.search(name) is not None


def credential_header(name: str) -> bool:
    """Whether a header carries a credential, so that its configured value is a secret."""
    return _CREDENTIAL_HEADER.search(name) is not None


def hide_url_passwords(text: str) -> str:
    """``text`` with the password of every URL in it replaced: ``redis://:pw@host`` is
    ``redis://:<redacted>@host``; a userinfo without ":" (often a token) is hidden whole."""
    if "@" not in text:
        return text

    def hide(match: re.Match[str]) -> str:
        scheme, userinfo = match.group(1), match.group(2)
        user, colon, password = userinfo.partition(":")
        if colon:
            return f"{scheme}{user}:{REDACTED}@" if password else match.group(0)
        return f"{scheme}{REDACTED}@" if userinfo else match.group(0)

    return _URL_USERINFO.sub(hide, text)


def secret_field(loc: Loc) -> bool:
    """Whether the value at ``loc`` is a secret because of where it is: a consumer's API keys,
    ``gateway.admin_token``, a plugin option named like a secret (and everything under it), a
    credential header set by a plugin (``request.set`` / ``response.set``) or by a step."""
    if loc[:2] == ("gateway", "admin_token") or (loc[:1] == ("consumers",) and "api_keys" in loc[2:]):
        return True
    options = _plugin_options(loc)
    if options is not None:
        if any(isinstance(part, str) and secret_option(part) for part in options):
            return True
        return (len(options) > 2 and options[0] in ("request", "response") and options[1] == "set"
                and credential_header(str(options[2])))
    return (len(loc) > 5 and loc[0] == "routes" and loc[2] == "steps" and loc[4] == "headers"
            and credential_header(str(loc[5])))


def _plugin_options(loc: Loc) -> Loc | None:
    """The part of ``loc`` inside a plugin's options, or None when ``loc`` is not under a
    plugin list (``plugins`` or ``routes[i].plugins``)."""
    if loc[:1] == ("plugins",):
        rest = loc[1:]
    elif len(loc) > 2 and loc[0] == "routes" and loc[2] == "plugins":
        rest = loc[3:]
    else:
        return None
    return rest[1:] if rest and isinstance(rest[0], int) else rest
