"""The manifest: appliance.toml parsed into validated, frozen models."""

from appliance.manifest.loader import (
    LoadedManifest,
    ManifestError,
    Problem,
    load_manifest,
    parse_manifest,
    render_path,
)
from appliance.manifest.models import Manifest

__all__ = [
    "LoadedManifest",
    "Manifest",
    "ManifestError",
    "Problem",
    "load_manifest",
    "parse_manifest",
    "render_path",
]
