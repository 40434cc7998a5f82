"""The offline demo: a local chain, the test USDC, a facilitator server, a paying client."""
