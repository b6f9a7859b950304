"""The OpenAI-compatible gateway: agents that speak the OpenAI API get routed adapters and
every exchange recorded as a run (docs/gateway.md)."""
