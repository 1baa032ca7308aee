"""Fleet mode: many replicas, one rollout, shared through Redis.

`batch` carries finished requests from the replica that served them to the one that judges the
rollout (pure, no I/O); `replica` runs the loops that keep a replica in step with the shared
state: change notifications, periodic reconcile, the decider lease, and evidence in and out.
"""
