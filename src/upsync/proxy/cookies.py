"""proxy_cookie_domain, proxy_cookie_path and proxy_cookie_flags on an upstream's Set-Cookie,
nginx's way: the value is split into attributes (each trimmed), the first domain and path rule
that matches replaces an attribute's value, the first flags rule whose cookie matches sets or
clears Secure, HttpOnly and SameSite; a cookie any of them changed is written again as nginx
writes it ("; " between attributes). Pure: given the rules and the request whose variables
they use."""

from upsync.config.model import CookieFlags, ProxySettings, RewriteRule
from upsync.proxy.request import Request

# an attribute: its name, and its value (None: a bare flag such as "Secure")
Attribute = tuple[str, str | None]

_SECURE_ON, _SECURE_OFF = 1, 2
_HTTPONLY_ON, _HTTPONLY_OFF = 4, 8
_STRICT, _LAX, _NONE, _SAMESITE_OFF = 16, 32, 64, 128
_SAMESITE_SET = _STRICT | _LAX | _NONE
_FLAG_BITS = {
    "secure": _SECURE_ON,
    "nosecure": _SECURE_OFF,
    "httponly": _HTTPONLY_ON,
    "nohttponly": _HTTPONLY_OFF,
    "samesite=strict": _STRICT,
    "samesite=lax": _LAX,
    "samesite=none": _NONE,
    "nosamesite": _SAMESITE_OFF,
}
_SAMESITE_VALUES = ((_STRICT, "Strict"), (_LAX, "Lax"), (_NONE, "None"))


def _by_regex(rule: RewriteRule, value: str, source: Request) -> str | None:
    """A regex rule's whole replacement (its captures as $1...), or None when it does not
    match."""
    assert rule.regex is not None
    match = rule.regex.search(value)
    if match is None:
        return None
    source.captures = match
    return rule.replacement.render(source)


def _domain(value: str, rules: tuple[RewriteRule, ...], source: Request) -> str | None:
    dot = "." if value.startswith(".") else ""
    bare = value[len(dot) :]
    for rule in rules:
        if rule.regex is not None:
            replaced = _by_regex(rule, value, source)
            if replaced is None:
                continue
            return replaced
        assert rule.match is not None
        if bare.lower() == rule.match.render(source).lstrip(".").lower():
            return dot + rule.replacement.render(source).lstrip(".")
    return None


def _path(value: str, rules: tuple[RewriteRule, ...], source: Request) -> str | None:
    for rule in rules:
        if rule.regex is not None:
            replaced = _by_regex(rule, value, source)
            if replaced is None:
                continue
            return replaced
        assert rule.match is not None
        prefix = rule.match.render(source)
        if value.startswith(prefix):
            return rule.replacement.render(source) + value[len(prefix) :]
    return None


def parse_cookie(text: str) -> list[Attribute]:
    """nginx's ngx_http_proxy_parse_cookie: split at ";", names and values trimmed of spaces."""
    attributes: list[Attribute] = []
    for part in text.split(";"):
        name, equals, value = part.partition("=")
        attributes.append((name.strip(" "), value.strip(" ") if equals else None))
    return attributes


def _flags_of(rules: tuple[CookieFlags, ...], cookie: str, source: Request) -> int:
    for rule in rules:
        if rule.regex is not None:
            match = rule.regex.search(cookie)
            if match is None:
                continue
            source.captures = match
        else:
            assert rule.name is not None
            if rule.name.render(source).lower() != cookie.lower():
                continue
        wanted = 0
        for flag in rule.flags:
            wanted |= _FLAG_BITS.get(flag.render(source).lower(), 0)  # unknown: ignored
        return wanted
    return 0


def edit_flags(attributes: list[Attribute], wanted: int) -> list[Attribute]:
    """nginx's ngx_http_proxy_edit_cookie_flags: flags already there stay (SameSite with
    another value is set), cleared ones go, missing ones are added at the end."""
    kept: list[Attribute] = [attributes[0]]
    for name, value in attributes[1:]:
        kind = name.lower()
        if kind == "secure" and wanted & (_SECURE_ON | _SECURE_OFF):
            if wanted & _SECURE_ON:
                wanted &= ~_SECURE_ON
            else:
                continue
        elif kind == "httponly" and wanted & (_HTTPONLY_ON | _HTTPONLY_OFF):
            if wanted & _HTTPONLY_ON:
                wanted &= ~_HTTPONLY_ON
            else:
                continue
        elif kind == "samesite" and wanted & (_SAMESITE_SET | _SAMESITE_OFF):
            for bit, spelled in _SAMESITE_VALUES:
                if wanted & bit:
                    wanted &= ~bit
                    if (value or "").lower() != spelled.lower():
                        name, value = "SameSite", spelled
                    break
            else:
                continue  # nosamesite
        kept.append((name, value))
    if wanted & _SECURE_ON:
        kept.append(("Secure", None))
    if wanted & _HTTPONLY_ON:
        kept.append(("HttpOnly", None))
    for bit, spelled in _SAMESITE_VALUES:
        if wanted & bit:
            kept.append(("SameSite", spelled))
            break
    return kept


def serialize_cookie(attributes: list[Attribute]) -> str:
    return "; ".join(name if value is None else f"{name}={value}" for name, value in attributes)


def rewrite_cookie(value: bytes, settings: ProxySettings, source: Request) -> bytes:
    """A Set-Cookie value with the location's rules applied, or the value as it came when
    none applies (or it has no "name=value" first)."""
    attributes = parse_cookie(value.decode("latin-1"))
    if attributes[0][1] is None:
        return value
    changed = False
    for index, (name, attribute_value) in enumerate(attributes):
        if index == 0 or attribute_value is None:
            continue
        kind = name.lower()
        new: str | None = None
        if kind == "domain" and settings.cookie_domains:
            new = _domain(attribute_value, settings.cookie_domains, source)
        elif kind == "path" and settings.cookie_paths:
            new = _path(attribute_value, settings.cookie_paths, source)
        if new is not None:
            attributes[index] = (name, new)
            changed = True
    if settings.cookie_flags:
        wanted = _flags_of(settings.cookie_flags, attributes[0][0], source)
        if wanted:
            attributes = edit_flags(attributes, wanted)
            changed = True
    return serialize_cookie(attributes).encode("latin-1") if changed else value
