"""Attestors: collect platform evidence that proves what this VM is."""
