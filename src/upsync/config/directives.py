"""Which directives upsync knows: its own (taught to crossplane), the nginx ones it implements,
and the nginx ones it accepts and ignores because they only tune nginx itself."""

from crossplane import analyzer

_UPS = analyzer.NGX_HTTP_UPS_CONF
_LOC = analyzer.NGX_HTTP_LOC_CONF

# Our directives are added to crossplane's table so that strict parsing checks their context and
# argument count like nginx does (crossplane's register_external_directives() fails on Python 3).
UPSYNC_DIRECTIVES: dict[str, list[int]] = {
    "upsync": [_UPS | analyzer.NGX_CONF_1MORE],
    "upsync_dump_path": [_UPS | analyzer.NGX_CONF_TAKE1],
    "upsync_lb": [_UPS | analyzer.NGX_CONF_TAKE1],
    "upstream_show": [_LOC | analyzer.NGX_CONF_NOARGS],
    "check": [_UPS | analyzer.NGX_CONF_1MORE],
    "check_http_send": [_UPS | analyzer.NGX_CONF_TAKE1],
    "check_http_expect_alive": [_UPS | analyzer.NGX_CONF_1MORE],
    "check_keepalive_requests": [_UPS | analyzer.NGX_CONF_TAKE1],
    "check_status": [_LOC | analyzer.NGX_CONF_NOARGS | analyzer.NGX_CONF_TAKE1],
}


# nginx directives newer than crossplane's table (keepalive_time: upstream 1.15.3, http 1.19.10;
# proxy_cookie_flags 1.19.3)
_HTTP_ANY_LEVEL = analyzer.NGX_HTTP_MAIN_CONF | analyzer.NGX_HTTP_SRV_CONF | _LOC
NEWER_NGINX_DIRECTIVES: dict[str, list[int]] = {
    "keepalive_time": [(_HTTP_ANY_LEVEL | _UPS) | analyzer.NGX_CONF_TAKE1],
    # 1.19.3: the cookie and up to three flags
    "proxy_cookie_flags": [_HTTP_ANY_LEVEL | analyzer.NGX_CONF_TAKE1234],
}


# nginx takes `include` in any block (its NGX_ANY_CONF has every context bit); crossplane's
# leaves out `if` and `limit_except`
_IF_AND_LIMIT_EXCEPT = (
    analyzer.NGX_HTTP_SIF_CONF | analyzer.NGX_HTTP_LIF_CONF | analyzer.NGX_HTTP_LMT_CONF
)


def register() -> None:
    for name, masks in NEWER_NGINX_DIRECTIVES.items():
        analyzer.DIRECTIVES.setdefault(name, masks)
    analyzer.DIRECTIVES["include"] = [
        mask | _IF_AND_LIMIT_EXCEPT for mask in analyzer.DIRECTIVES["include"]
    ]
    for name, masks in UPSYNC_DIRECTIVES.items():
        analyzer.DIRECTIVES[name] = masks


# nginx directives that tune nginx's own internals (buffers, sendfile, hash sizes, event methods);
# accepting them lets an existing nginx.conf run unchanged. Each is reported once as a notice.
IGNORED = frozenset(
    {
        "user",
        "worker_cpu_affinity",
        "worker_priority",
        "pcre_jit",
        "thread_pool",
        "timer_resolution",
        "lock_file",
        "env",
        "use",
        "multi_accept",
        "accept_mutex",
        "accept_mutex_delay",
        "worker_aio_requests",
        "sendfile",
        "sendfile_max_chunk",
        "tcp_nopush",
        "tcp_nodelay",
        "types_hash_max_size",
        "types_hash_bucket_size",
        "server_names_hash_bucket_size",
        "server_names_hash_max_size",
        "variables_hash_max_size",
        "variables_hash_bucket_size",
        "charset",
        "gzip",
        "gzip_vary",
        "gzip_proxied",
        "gzip_comp_level",
        "gzip_buffers",
        "gzip_http_version",
        "gzip_types",
        "gzip_min_length",
        "gzip_disable",
        "client_header_buffer_size",
        "connection_pool_size",
        "request_pool_size",
        "proxy_buffers",
        "proxy_busy_buffers_size",
        "proxy_temp_path",
        "proxy_temp_file_write_size",
        "proxy_max_temp_file_size",
        # upsync joins a body for $request_body whatever its buffers
        "client_body_in_single_buffer",
        "proxy_ignore_client_abort",
        "open_file_cache",
        "open_file_cache_valid",
        "open_file_cache_min_uses",
        "open_file_cache_errors",
        "reset_timedout_connection",
        "resolver",
        "resolver_timeout",
        "log_not_found",
        "output_buffers",
        "postpone_output",
        "send_lowat",
        "merge_slashes",
        "msie_padding",
        "msie_refresh",
        "log_subrequest",
        "open_log_file_cache",
    }
)


# Of those, the ones that change what a client gets when given some values: ignoring them would
# serve something other than what the config says, so upsync refuses them, naming what it does
# not do. (name, value that changes behaviour or None for any) -> why
_NOT_DONE: dict[tuple[str, str | None], str] = {
    ("resolver", None): "upsync resolves upstream names when it loads the configuration and "
    "has no run-time resolver",
    ("resolver_timeout", None): "upsync resolves upstream names when it loads the "
    "configuration and has no run-time resolver",
    ("gzip", "on"): "upsync does not compress responses (gzip on)",
    ("proxy_ignore_client_abort", "on"): "upsync ends the upstream request when the client "
    "goes away; proxy_ignore_client_abort on is not supported",
    ("merge_slashes", "off"): "upsync always merges slashes in the URI (merge_slashes off is "
    "not supported)",
}


def refusal(name: str, args: list[str]) -> str | None:
    """Why upsync refuses this ignored directive with these arguments, or None to accept it."""
    why = _NOT_DONE.get((name, None))
    if why is None and args:
        why = _NOT_DONE.get((name, args[0].lower()))
    if why is None and name == "charset" and args and args[0].lower() != "off":
        why = "upsync does not add a charset to Content-Type (charset off is the only value)"
    return why
