from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

# The API first: labelers' next/submit calls are most of the traffic, and resolving walks the list in order.
urlpatterns = [
    path("api/v1/", include("annotate.api.urls")),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("", include("annotate.web.urls")),
]

# A lost database connection is a 503 with Retry-After, not a 500 (annotate.core.db).
handler500 = "annotate.core.db.server_error"
