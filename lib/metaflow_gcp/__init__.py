"""Stand up and tear down a minimal Metaflow stack on Google Cloud.

Modules import their heavy dependencies (rich, yaml) lazily so that `inv --list`
stays fast.
"""

__version__ = "0.1.0"
