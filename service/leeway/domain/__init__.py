"""Leeway's domain: budgets, policies, money and the events that record them.

Pure Python plus the eventsourcing library: nothing here knows about gRPC or protobuf.
"""
