"""Ingestion: taking events off a queue, preparing them and storing them.

The consumer loop lives in :mod:`.consumer`; :class:`.ingester.Ingester`
turns a batch of plugin events into stored rows (persons, events, session
recordings, definitions) with a bounded number of round trips per batch.
"""
