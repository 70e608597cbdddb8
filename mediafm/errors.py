"""Every exception the platform raises on purpose, in one place.

    MediaFMError                 base: catch this to catch anything of ours
    ├── ConfigError              a setting is missing, malformed or contradictory (an unknown profile too)
    ├── StackError               the local Kafka / Triton stack cannot start or answer
    │   ├── PortInUseError       a port we need is taken by someone else
    │   └── MissingToolError     java, mvn, or the Triton binary is not installed
    ├── DatasetError             a shot-embedding dataset breaks the v1 format
    ├── ModelError               a model checkpoint or export is unusable
    │   └── VersionRetired       a model version asked for by number is no longer served
    ├── BadInput                 the input itself is wrong: retrying cannot help; the streams dead-letter it
    │   ├── SchemaError          a Kafka message does not match its schema
    │   ├── BadRequest           Triton rejected a request itself (4xx: wrong shape, too long)
    │   └── MediaError           a media file, URI or subtitle file cannot be used
    │       ├── MediaURIError    the URI's scheme or path is not allowed, or the file is missing/too big
    │       ├── CorruptMediaError  FFmpeg cannot open or decode it (corrupt, truncated, zero-length)
    │       ├── NoVideoError     the container has no video stream (audio-only, subtitles-only)
    │       ├── SubtitleError    a subtitle file cannot be parsed or decoded (broken, unknown encoding)
    │       └── EncoderError     an encoder checkpoint is missing, or an embedding service refused the input
    └── Transient                a service is down, overloaded or out of memory: wait and retry
        ├── TritonUnavailable    Triton did not answer within the caller's patience
        ├── EncoderUnavailable   an embedding service (the OpenAI API) stayed unavailable that long
        └── MediaUnavailable     the media's storage failed to answer (too many open files, an I/O error, a
                                 stale or unreachable network mount): the same file may read later

Two families decide what the streams do with a failure: ``BadInput`` goes to
the dead-letter topic with its message as the reason; ``Transient`` is waited
out and retried (mediafm/triton_client.py), never dead-lettered.
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


class BadInput(MediaFMError):
    """The input (a message, a file, a request) is wrong; the same input will fail again."""


class Transient(MediaFMError):
    """A service is down, overloaded or out of memory; the same call may succeed later."""


class SchemaError(BadInput):
    """A message does not decode to the schema it claims to have."""


class DatasetError(MediaFMError):
    """A dataset on disk does not follow the v1 shot-embedding format."""


class ModelError(MediaFMError):
    """A checkpoint, config or exported model is unusable."""


class BadRequest(BadInput):
    """Triton rejected the input itself (4xx); retrying cannot help."""


class TritonUnavailable(Transient):
    """Triton did not answer within the caller's patience."""


class EncoderUnavailable(Transient):
    """An embedding service (the OpenAI API) stayed unavailable (5xx, 429, timeouts) past the caller's patience."""


class MediaError(BadInput):
    """A media file, its URI or its subtitles cannot be turned into shots and embeddings."""


class MediaURIError(MediaError):
    """A media URI has a scheme or path outside the allowed ones, or is missing, empty or too large."""


class CorruptMediaError(MediaError):
    """FFmpeg cannot open or decode the file (corrupt, truncated, not media)."""


class NoVideoError(MediaError):
    """The container has no video stream: nothing to cut into shots."""


class SubtitleError(MediaError):
    """A subtitle file or stream cannot be parsed or decoded."""


class EncoderError(MediaError):
    """An encoder cannot be loaded (checkpoint directory), or its service refused the input (400) or answered nonsense."""


class VersionRetired(ModelError):
    """A model version asked for by number (a live event's pinned MediaFM) is no longer served."""


class MediaUnavailable(Transient):
    """The storage holding a media file did not answer a read (EMFILE, EIO, ESTALE, ETIMEDOUT, ...): a fault of
    the machine or its mount, not of the file; waited out and retried, never dead-lettered."""
