"""What a stored run means, below both the engine (which stores runs) and reporting (which shows them): a
run's summary with its flags (``runs``), the names and provenance words for models and runs (``names``),
and what the store recorded about each model for its pages (``models``). Nothing here loads a checkpoint or
attacks a model; everything is read from the store."""
