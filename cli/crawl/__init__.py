"""`jobstream crawl`: a site's pages found and warmed by an ordinary job of `http.warm` tasks."""

from jobstream.cli.crawl._command import CRAWL_HELP, crawl

__all__ = ["CRAWL_HELP", "crawl"]
