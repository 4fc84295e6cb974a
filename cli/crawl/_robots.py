"""robots.txt read for one user agent: its sitemaps, its crawl delay, what it allows.

Allow/Disallow are urllib.robotparser's (first matching rule of the group that applies).
Crawl-delay is read here too, because robotparser keeps only whole seconds and sites write
`Crawl-delay: 0.5`; the group is chosen as robotparser chooses it.
"""

from dataclasses import dataclass, field
from urllib.robotparser import RobotFileParser

# What a crawler must read of a robots.txt (RFC 9309 §2.5: at least 500 KiB).
MAX_ROBOTS_BYTES = 512 * 1024
_DIRECTIVES = frozenset(
    {"user-agent", "allow", "disallow", "sitemap", "crawl-delay", "request-rate", "host"}
)


@dataclass(frozen=True)
class RobotsRules:
    sitemaps: list[str] = field(default_factory=list)
    crawl_delay_s: float | None = None
    parser: RobotFileParser | None = None
    user_agent: str = "*"

    def allows(self, url: str) -> bool:
        return self.parser is None or self.parser.can_fetch(self.user_agent, url)


ALLOW_ALL = RobotsRules()


@dataclass(frozen=True)
class ParsedRobots:
    rules: RobotsRules
    # Why the file was set aside as not a robots.txt, if it was.
    garbage: str | None = None


def parse_robots(body: bytes, user_agent: str) -> ParsedRobots:
    """The rules of a robots.txt body for `user_agent`. A body that is no robots.txt at all
    (binary, HTML, not one directive) gives no rules, with the reason."""
    if b"\x00" in body:
        return ParsedRobots(ALLOW_ALL, "it holds binary data")
    lines = body.decode("utf-8", errors="replace").splitlines()
    directives = [_directive(line) for line in lines]
    present = [d for d in directives if d is not None]
    if not present:
        meaningful = any(line.split("#", 1)[0].strip() for line in lines)
        return ParsedRobots(ALLOW_ALL, "it has no robots.txt directive" if meaningful else None)
    parser = RobotFileParser()
    parser.parse(lines)
    return ParsedRobots(
        RobotsRules(
            sitemaps=[value for name, value in present if name == "sitemap" and value],
            crawl_delay_s=crawl_delay(present, user_agent),
            parser=parser,
            user_agent=user_agent,
        )
    )


def _directive(line: str) -> tuple[str, str] | None:
    name, colon, value = line.split("#", 1)[0].partition(":")
    name = name.strip().lower()
    if not colon or name not in _DIRECTIVES:
        return None
    return name, value.strip()


def crawl_delay(directives: list[tuple[str, str]], user_agent: str) -> float | None:
    """The Crawl-delay of the first group naming `user_agent`'s product token, else of the
    `*` group; None when that group has none (or an unusable one)."""
    token = user_agent.split("/", maxsplit=1)[0].lower()
    groups: list[tuple[list[str], float | None]] = []
    agents: list[str] = []
    delay: float | None = None
    in_rules = False
    for name, value in directives:
        if name == "user-agent":
            if in_rules:
                groups.append((agents, delay))
                agents, delay, in_rules = [], None, False
            agents.append(value.lower())
        elif name == "crawl-delay" and agents:
            in_rules = True
            delay = _seconds(value)
        elif name in ("allow", "disallow") and agents:
            in_rules = True
    if agents:
        groups.append((agents, delay))
    for names, group_delay in groups:
        if any(name != "*" and name in token for name in names):
            return group_delay
    return next((d for names, d in groups if "*" in names), None)


def _seconds(value: str) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds < 86_400 else None
