"""rollout-proxy: an asyncio HTTP reverse proxy for progressive rollouts."""

__version__ = "0.1.0"
