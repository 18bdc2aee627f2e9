"""proxy_cookie_domain and proxy_cookie_path on an upstream's Set-Cookie (nginx's rules): the
first rule that matches an attribute's value replaces it. Pure: given the rules and the
request whose variables the rules use."""

from upsync.config.model import RewriteRule
from upsync.proxy.request import Request


def _domain(value: str, rules: tuple[RewriteRule, ...], source: Request) -> str | None:
    dot = "." if value.startswith(".") else ""
    bare = value[len(dot) :]
    for rule in rules:
        if rule.regex is not None:
            match = rule.regex.search(value)
            if match is None:
                continue
            source.captures = match  # $1... in the replacement
            return rule.replacement.render(source)
        assert rule.match is not None
        if bare.lower() == rule.match.render(source).lstrip(".").lower():
            return dot + rule.replacement.render(source).lstrip(".")
    return None


def _path(value: str, rules: tuple[RewriteRule, ...], source: Request) -> str | None:
    for rule in rules:
        if rule.regex is not None:
            match = rule.regex.search(value)
            if match is None:
                continue
            source.captures = match
            return rule.replacement.render(source)
        assert rule.match is not None
        prefix = rule.match.render(source)
        if value.startswith(prefix):
            return rule.replacement.render(source) + value[len(prefix) :]
    return None


def rewrite_cookie(
    value: bytes,
    domains: tuple[RewriteRule, ...],
    paths: tuple[RewriteRule, ...],
    source: Request,
) -> bytes:
    """A Set-Cookie value with its Domain and Path attributes rewritten; the cookie itself
    (before the first ";") and every other attribute are left as they are."""
    text = value.decode("latin-1")
    parts = text.split(";")
    changed = False
    for index in range(1, len(parts)):
        name, equals, attribute = parts[index].partition("=")
        kind = name.strip().lower()
        if not equals or kind not in ("domain", "path"):
            continue
        rules = domains if kind == "domain" else paths
        if not rules:
            continue
        rewrite = _domain if kind == "domain" else _path
        new = rewrite(attribute.strip(), rules, source)
        if new is not None:
            parts[index] = " " + name.lstrip() + equals + new  # nginx writes "; name=value"
            changed = True
    return ";".join(parts).encode("latin-1") if changed else value
