from django.apps import AppConfig


class AnnotateConfig(AppConfig):
    name = "annotate"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import generation, guidance, reward_job  # noqa: F401  (register the job kinds)
