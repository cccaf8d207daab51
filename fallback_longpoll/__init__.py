"""HTTP long polling for customers whose network blocks WebSockets.

Same tokens, seq numbers and guarantees as `/v1/ws/customer`: every request stands alone
(token + last seq), so any node can answer any request and no session lives in node memory.
"""
