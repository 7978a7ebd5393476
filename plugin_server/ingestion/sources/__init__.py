"""Where ingestion messages come from: one :class:`~.base.Source` protocol, one module per queue."""
