"""The ground layer: what every tier shares and nothing above it.

The types and their msgpack codec (`types`), the engine protocol's client and transport
(`engine_client`, `engine_http`), the trainer → engine weight-update protocol (`weight_sync`,
`cuda_ipc`), model materialisation (`models`), loopback and free-port checks (`net`). It imports
no tier and nothing else of `forge`; the tiers (agent_side, gateway, data_pool, trainer) import
it, and the driver and CLI (the rest of `forge`) sit on top. `lint-imports` checks this (pyproject.toml).
"""
