from django.apps import AppConfig


class AnnotateConfig(AppConfig):
    name = "annotate"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import generation, guidance, policy_alternatives, policy_jobs, reward_job, rounds  # noqa: F401  (register the job kinds)
        from . import file_imports  # noqa: F401  (registers the "import" job kind)
        from . import optimize_job  # noqa: F401  (registers the "optimize" job kind)
        from . import snapshot_job  # noqa: F401  (registers the "snapshot" job kind)
