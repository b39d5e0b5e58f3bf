from django.apps import AppConfig


class AnnotateConfig(AppConfig):
    name = "annotate"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Importing a job module registers its run kinds with the engine (annotate.jobs.engine.register).
        from annotate.campaigns.imports import files  # noqa: F401  ("import")
        from annotate.exports import snapshot_job  # noqa: F401  ("snapshot")
        from annotate.runs import compression, generation, ppo, reward, rounds, selection, sft_dpo_rloo  # noqa: F401
