"""Every core: one port served by several processes, one rollout.

`rollout-proxy run --workers N` (N > 1) starts a supervisor (supervisor.py) that owns the
admin listener, the controller and the state, and N data-plane worker processes (worker.py)
that each listen on the same port (SO_REUSEPORT: the kernel spreads connections). The
supervisor sends every worker the routing snapshot of each rollout step; workers send back
what they served, as evidence batches (proxy/fleet/batch.py) and metric counters, so the
analysis and /metrics see the sum. channel.py frames those messages on a socket pair.
"""
