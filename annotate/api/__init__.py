"""REST API v1: one module per resource, serializers that check shape only, token authentication,
error rendering and urls. Views fetch through `annotate.access` and call the same service
functions as the pages."""
