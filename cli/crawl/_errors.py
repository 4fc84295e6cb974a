"""What can go wrong while finding a site's pages, and the exit code each gets.

The rule: what the user gave, or what the site serves, that cannot be used (a malformed URL,
a sitemap that answers 404 or is not XML, no URLs at all) is a usage error, exit 2; a host
that cannot be reached (DNS, refused, timed out, a robots.txt answering 5xx) exits 3, as a
NATS or PostgreSQL server not reached does. Both reject a job already half-sent.
"""

from jobstream.cli._runtime import SourceFailed, UsageError
from jobstream.events import ConnectError


class DiscoveryError(UsageError, SourceFailed):
    """The site's URLs cannot be found from what was given."""


class SitemapMissing(DiscoveryError):
    """A sitemap's URL answered 404 or 410."""


class SiteUnreachable(ConnectError, SourceFailed):
    """A host of the crawl could not be reached."""

    def __init__(self, url: str, cause: str) -> None:
        super().__init__("the site", url, cause)
