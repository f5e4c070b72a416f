"""The OpenAPI schema view (`/api/schema/`): drf-spectacular's, with its errors
in the API's JSON error shape. Its renderers are YAML and JSON OpenAPI
documents, so a 405 for a POST came back as a YAML document."""
from __future__ import annotations

from drf_spectacular.views import SpectacularAPIView
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response


class SchemaView(SpectacularAPIView):
    def handle_exception(self, exc: Exception) -> Response:
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return super().handle_exception(exc)
