"""Channel names. Fan-out is per conversation, agent and tenant: no global channel."""


def conversation(conversation_id: str) -> str:
    return f"conv:{conversation_id}"


def agent(agent_id: str) -> str:
    return f"agent:{agent_id}"


def tenant_queue(tenant_id: str) -> str:
    return f"queue:{tenant_id}"


def tenant_dispatch(tenant_id: str) -> str:
    """Wake-ups for the dispatchers of every node (a slot freed, an agent came online)."""
    return f"dispatch:{tenant_id}"
