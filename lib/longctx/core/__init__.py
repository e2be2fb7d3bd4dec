"""Shared layers every stage uses: parameters (``config``), the tokenizer, notebook execution and
records, the stage table, progress lines. ``core`` imports nothing else of ours."""
