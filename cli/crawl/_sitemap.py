"""Sitemaps parsed as a stream: bytes in, `<loc>`s out, never the whole document at once.

expat directly (ElementTree's own parser), so that a document type declaration can be
refused outright: a sitemap never needs one, and without it there is no entity to expand
(no billion laughs, no external entity).
"""

import zlib
from collections.abc import Iterator
from enum import StrEnum
from xml.parsers import expat

from jobstream.cli.crawl._errors import DiscoveryError
from jobstream.cli.crawl._urls import MAX_URL_LENGTH

# A sitemap is at most 50 MB by the protocol; this bounds a gzip bomb, not honest files.
MAX_SITEMAP_BYTES = 512 * 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
# Bytes inflated at a time, so one small compressed chunk cannot become a huge string.
_INFLATE_STEP = 1024 * 1024


class SitemapKind(StrEnum):
    URLSET = "urlset"  # <loc>s of pages
    INDEX = "sitemapindex"  # <loc>s of more sitemaps


_ENTRY_OF = {SitemapKind.URLSET: "url", SitemapKind.INDEX: "sitemap"}


class _Refused(Exception):
    pass


class SitemapParser:
    """Feed a sitemap's bytes in pieces; each `feed` returns the `<loc>`s completed so far,
    each with the kind of sitemap it is in. `DiscoveryError` for a document that is not XML
    or not a sitemap."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.kind: SitemapKind | None = None
        self._found: list[tuple[SitemapKind, str]] = []
        self._path: list[str] = []
        self._text: list[str] | None = None
        self._text_length = 0
        self._fed = 0
        parser = expat.ParserCreate(namespace_separator=" ")
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartDoctypeDeclHandler = self._refuse_doctype
        parser.EntityDeclHandler = self._refuse_entity
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._characters
        self._parser = parser

    def feed(self, data: bytes) -> list[tuple[SitemapKind, str]]:
        self._fed += len(data)
        self._parse(data, final=False)
        found, self._found = self._found, []
        return found

    def close(self) -> list[tuple[SitemapKind, str]]:
        if not self._fed:
            raise DiscoveryError(f"sitemap {self.where} is empty")
        self._parse(b"", final=True)
        found, self._found = self._found, []
        return found

    def _parse(self, data: bytes, *, final: bool) -> None:
        try:
            self._parser.Parse(data, final)
        except expat.ExpatError as exc:
            raise DiscoveryError(f"sitemap {self.where} is not XML: {exc}") from None
        except _Refused as exc:
            raise DiscoveryError(f"sitemap {self.where} refused: {exc}") from None

    def _refuse_doctype(self, *_: object) -> None:
        raise _Refused("it declares a document type (entities are not accepted in a sitemap)")

    def _refuse_entity(self, *_: object) -> None:
        raise _Refused("it declares an entity")

    def _start(self, name: str, _attributes: dict[str, str]) -> None:
        local = name.rsplit(" ", 1)[-1]
        if not self._path:
            if local not in (SitemapKind.URLSET, SitemapKind.INDEX):
                raise DiscoveryError(
                    f"{self.where} is not a sitemap: its root element is <{local[:50]}>,"
                    " not <urlset> or <sitemapindex>"
                )
            self.kind = SitemapKind(local)
        elif local == "loc" and self._is_entry(self._path):
            self._text, self._text_length = [], 0
        self._path.append(local)

    def _is_entry(self, path: list[str]) -> bool:
        return len(path) == 2 and self.kind is not None and path[1] == _ENTRY_OF[self.kind]

    def _characters(self, data: str) -> None:
        if self._text is not None and self._text_length <= MAX_URL_LENGTH:
            self._text.append(data)
            self._text_length += len(data)

    def _end(self, _name: str) -> None:
        self._path.pop()
        if self._text is not None and len(self._path) == 2:
            loc = "".join(self._text).strip()
            self._text = None
            if loc and self.kind is not None:
                self._found.append((self.kind, loc))


class BodyDecoder:
    """A sitemap's body as XML bytes: gunzipped when it is gzip (by its first bytes, whatever
    its name or headers say), and bounded in size."""

    def __init__(self, where: str, *, max_bytes: int = MAX_SITEMAP_BYTES) -> None:
        self.where = where
        self.max_bytes = max_bytes
        self._inflater: zlib._Decompress | None = None
        self._head = b""
        self._decided = False
        self.size = 0

    def decode(self, chunk: bytes) -> Iterator[bytes]:
        if not self._decided:
            self._head += chunk
            if len(self._head) < len(_GZIP_MAGIC):
                return
            chunk, self._head, self._decided = self._head, b"", True
            if chunk.startswith(_GZIP_MAGIC):
                self._inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
        if self._inflater is None:
            yield self._counted(chunk)
            return
        yield from self._inflate(chunk)

    def finish(self) -> Iterator[bytes]:
        if not self._decided and self._head:
            yield self._counted(self._head)
        if self._inflater is not None and not self._inflater.eof:
            raise DiscoveryError(f"sitemap {self.where}: its gzip data ends early")

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        assert self._inflater is not None
        try:
            while data and not self._inflater.eof:
                yield self._counted(self._inflater.decompress(data, _INFLATE_STEP))
                data = self._inflater.unconsumed_tail
        except zlib.error as exc:
            raise DiscoveryError(f"sitemap {self.where}: bad gzip data ({exc})") from None

    def _counted(self, data: bytes) -> bytes:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise DiscoveryError(
                f"sitemap {self.where} is over {self.max_bytes:,} bytes uncompressed"
            )
        return data
