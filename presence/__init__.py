"""Agent presence, the queue and dispatch: pure bookkeeping with thin async shells."""
