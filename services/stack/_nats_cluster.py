"""A JetStream cluster of nats-servers on loopback: for fault tests and local trials of R3."""

from pathlib import Path

from jobstream.services.stack._nats_server import NatsServer
from jobstream.services.stack._postgres_server import free_port

DEFAULT_CLUSTER_SIZE = 3


def cluster_config(*, name: str, host: str, port: int, route_ports: list[int]) -> str:
    """The `cluster {}` block of one node: its route port and a route to every node."""
    routes = ", ".join(f'"nats-route://{host}:{route_port}"' for route_port in route_ports)
    return (
        f'cluster {{\n  name: "{name}"\n  host: "{host}"\n  port: {port}\n'
        f"  routes: [{routes}]\n}}\n"
    )


class NatsCluster:
    """`size` nats-servers, each with its own store under `base_dir`, routed to each other.

    A cluster needs its route ports before any node starts, so they are picked once here
    and kept across restarts; client ports are chosen by each node at its first start and
    kept too, so clients given `url` find every node again after it comes back.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        size: int = DEFAULT_CLUSTER_SIZE,
        name: str = "jobstream",
        host: str = "127.0.0.1",
        sync_always: bool = False,
    ) -> None:
        route_ports = [free_port(host) for _ in range(size)]
        self.name = name
        self.nodes = [
            NatsServer(
                base_dir / f"{name}-{index}",
                host=host,
                server_name=f"{name}-{index}",
                extra_config=cluster_config(
                    name=name, host=host, port=route_port, route_ports=route_ports
                ),
                sync_always=sync_always,
            )
            for index, route_port in enumerate(route_ports)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated, as `--nats-url` takes them."""
        return ",".join(self.urls)

    def node(self, server_name: str) -> NatsServer:
        for node in self.nodes:
            if node.server_name == server_name:
                return node
        raise KeyError(server_name)

    def start(self) -> "NatsCluster":
        """Start every node; JetStream is usable once the nodes have elected a meta leader,
        which clients see as `ServiceUnavailableError` until then."""
        try:
            for node in self.nodes:
                node.start()
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()
