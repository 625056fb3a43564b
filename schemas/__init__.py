"""The event contract: Avro schemas (``<name>/vN.avsc``) and the serde that encodes them.

See :mod:`schemas.serde` for the two wire formats.
"""

from schemas.serde import SCHEMA_NAMES, Codec, codec, codec_from_settings, defaults, latest, versions

__all__ = ["SCHEMA_NAMES", "Codec", "codec", "codec_from_settings", "defaults", "latest", "versions"]
