"""Shared fixtures: the local fakes of Google Cloud (tests/fakes) for every test layer."""

pytest_plugins = ["tests.fakes.plugin"]
