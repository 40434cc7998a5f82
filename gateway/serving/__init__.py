"""How the gateway runs as a server process: the runner's phases (start, serve, drain,
stop), signals, the listener (connection cap, request-head timeout), pre-forked workers and
the admin listener. It serves whatever aiohttp app it is given; it knows nothing of x402.

Public face: `run` (gateway.serving.runner) and the shared state in `gateway.serving.state`.
"""
