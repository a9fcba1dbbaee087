"""The gateway: OpenAI + Anthropic compatible HTTP server, sessions, token ledger, engine routing."""
