"""Operator tooling: strict mocks, offline synth, docs (`python -m ops --help`)."""
