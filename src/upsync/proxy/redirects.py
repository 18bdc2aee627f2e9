"""proxy_redirect on an upstream's Location and Refresh (nginx's rules): the first rule that
matches replaces the start it matched (a prefix), or the whole value (a regex, whose captures
the replacement may use). Pure: given the rules and the request whose variables they use."""

from upsync.config.model import LocationConfig, ProxyPass, RewriteRule
from upsync.config.variables import Template
from upsync.proxy.request import Request


def location_rules(location: LocationConfig, handler: ProxyPass) -> tuple[RewriteRule, ...]:
    """The location's proxy_redirect rules; `default` (also when nothing sets any) replaces
    the proxy_pass URL with the location's prefix, or "http://upstream/" with "/" when
    proxy_pass has no URI, as nginx works it out. A proxy_pass with variables has no default."""
    configured = location.proxy.redirects
    rules: list[RewriteRule] = []
    for rule in configured if configured is not None else (None,):
        if rule is not None:
            rules.append(rule)
        elif handler.upstream is not None:
            url = f"{handler.scheme}://{handler.upstream}"
            if handler.uri is not None:
                source, target = url + handler.uri, location.path
            else:
                source, target = url + "/", "/"
            # taken as written: a "$" in them is no variable
            rules.append(RewriteRule(Template((source,)), None, Template((target,))))
    return tuple(rules)


def rewrite_redirect(
    value: bytes, rules: tuple[RewriteRule, ...], refresh: bool, source: Request
) -> bytes:
    """A Location value (or a Refresh value's part after "url=") rewritten by the first rule
    that matches it (case-sensitively, as nginx), or the value as it was."""
    start = 0
    if refresh:
        found = value.lower().find(b"url=")
        if found < 0:
            return value
        start = found + 4
    text = value.decode("latin-1")
    for rule in rules:
        if rule.regex is not None:
            match = rule.regex.search(text[start:])  # "^" anchors at the URL's start
            if match is None:
                continue
            source.captures = match  # $1... in the replacement
            return value[:start] + rule.replacement.render(source).encode("latin-1")
        assert rule.match is not None
        prefix = rule.match.render(source)
        if text.startswith(prefix, start):
            replaced = rule.replacement.render(source)
            return (text[:start] + replaced + text[start + len(prefix) :]).encode("latin-1")
    return value
