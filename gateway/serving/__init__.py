"""How the gateway runs as a server process: the runner's phases (start, serve, drain,
stop), signals, the listener (connection cap, request-head timeout), pre-forked workers and
the admin listener. It serves whatever aiohttp app it is given; it knows nothing of x402.

Public face: `run(settings, make_app, make_admin)`, and the state the served app shares with
the process (`ServerState` under `SERVER_STATE`, the `RELOAD` hook) in `gateway.serving.state`.
"""

from gateway.serving.runner import run
from gateway.serving.state import RELOAD, SERVER_STATE, ServerState, attach_state

__all__ = ["RELOAD", "SERVER_STATE", "ServerState", "attach_state", "run"]
