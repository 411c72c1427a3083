"""Agents: a shared actor-critic state and small files of losses on top of it."""
