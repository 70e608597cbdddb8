"""Every exception the platform raises on purpose, in one place.

    MediaFMError                 base: catch this to catch anything of ours
    ├── ConfigError              a setting is missing, malformed or contradictory
    ├── StackError               the local Kafka / Triton stack cannot start or answer
    │   ├── PortInUseError       a port we need is taken by someone else
    │   └── MissingToolError     java, mvn, or the Triton binary is not installed
    ├── SchemaError              a Kafka message does not match its schema
    ├── DatasetError             a shot-embedding dataset breaks the v1 format
    └── ModelError               a model checkpoint or export is unusable

Each message says what failed, with the offending values, and how to fix it.
Messages are written for the person at the terminal: one line, cause and fix.
"""

from __future__ import annotations


class MediaFMError(Exception):
    """Base class of every error raised on purpose by mediafm."""


class ConfigError(MediaFMError):
    """A setting is missing, malformed or contradictory."""


class StackError(MediaFMError):
    """The local Kafka / Triton stack cannot be started, stopped or reached."""


class PortInUseError(StackError):
    """A TCP port the stack needs is already bound by another process."""


class MissingToolError(StackError):
    """An external program (java, mvn, tritonserver) is missing."""


class SchemaError(MediaFMError):
    """A message does not decode to the schema it claims to have."""


class DatasetError(MediaFMError):
    """A dataset on disk does not follow the v1 shot-embedding format."""


class ModelError(MediaFMError):
    """A checkpoint, config or exported model is unusable."""
