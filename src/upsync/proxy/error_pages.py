"""error_page: which page replaces an error, and where it sends the request. Pure: decided
from the location's configuration, the status and the request's redirect count."""

from typing import Final

from upsync.config.model import ErrorPage, LocationConfig

# nginx's limit on internal redirections of one request ("rewrite or internal redirection
# cycle"): with recursive_error_pages, error pages that fail into error pages end here
MAX_REDIRECTS: Final = 10
REDIRECT_CODES: Final = frozenset({301, 302, 303, 307, 308})


def page_for(location: LocationConfig, status: int, redirects: int) -> ErrorPage | None:
    """The error page for this status, if one applies: a request already sent to an error
    page gets another only with recursive_error_pages, and never past MAX_REDIRECTS."""
    if not location.error_pages:
        return None
    if redirects and (not location.recursive_error_pages or redirects >= MAX_REDIRECTS):
        return None
    for page in location.error_pages:
        if status in page.codes:
            return page
    return None


def final_status(page: ErrorPage, original: int) -> int:
    """The status the client gets: the original code, the one after "=", or 0 for whatever
    the error page answers ("=" alone)."""
    if page.status is None:
        return original
    if page.status == "=":
        return 0
    return page.status


def external_redirect_code(page: ErrorPage) -> int:
    """An error page that is an absolute URL is a redirect: 302, or the code after "=" when
    it is a redirect code."""
    return page.status if isinstance(page.status, int) and page.status in REDIRECT_CODES else 302
