"""Local fakes of Google Cloud for driving the real ``gcloud`` CLI in tests.

See ``README.md`` in this directory; fixtures live in :mod:`tests.fakes.plugin`.
"""
