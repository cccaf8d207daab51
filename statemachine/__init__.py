"""The conversation state machine: declared as data, pure, no I/O."""

from statemachine.machine import (
    STATES,
    TRANSITIONS,
    TransitionSpec,
    allowed_triggers,
    next_state,
)

__all__ = ["STATES", "TRANSITIONS", "TransitionSpec", "allowed_triggers", "next_state"]
