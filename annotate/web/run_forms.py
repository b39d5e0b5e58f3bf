"""Django forms for the admin pages; the service functions validate again and have the last word."""
from __future__ import annotations

from django import forms

from annotate import access
from annotate.models import ModelVersion, Response
from annotate.runs.fit import fit_summary
from annotate.runs.registry import DEFAULT_BASE_NAME, current_policy


def generatable_models(campaign) -> list[str]:
    """The models a run of `campaign` may generate with or train from (never another campaign's)."""
    versions = ModelVersion.objects.exclude(checkpoint_path="").exclude(kind=ModelVersion.Kind.REWARD).order_by("-created_at")
    names = list(access.models_usable_in(campaign, versions).values_list("name", flat=True))
    return names if DEFAULT_BASE_NAME in names else [DEFAULT_BASE_NAME, *names]


class GenerationForm(forms.Form):
    models = forms.MultipleChoiceField(help_text="Each model samples n responses per prompt.")
    n_per_prompt = forms.IntegerField(min_value=1, max_value=16, initial=2, label="Responses per prompt")
    temperature = forms.FloatField(min_value=0.01, max_value=2.0, initial=0.7)
    top_p = forms.FloatField(min_value=0.01, max_value=1.0, initial=1.0, label="Top-p")
    max_new_tokens = forms.IntegerField(min_value=1, max_value=2048, initial=128, label="Max new tokens")
    limit = forms.IntegerField(min_value=1, required=False, help_text="Only the first N prompts (empty: all).")
    head_to_head_with = forms.ChoiceField(required=False, label="Pair each new response with", help_text="Head to head against an earlier model's responses.")

    def __init__(self, *args, campaign, **kwargs):
        super().__init__(*args, **kwargs)
        names = generatable_models(campaign)
        _choice_field(self, "models").choices = [(n, n) for n in names]
        policy = current_policy(campaign).name
        self.fields["models"].initial = [policy if policy in names else names[0]]  # defaults that work: one click generates
        baselines = Response.objects.filter(prompt__campaign=campaign).values_list("model_version__name", flat=True).distinct()
        _choice_field(self, "head_to_head_with").choices = [("", "— build tasks from new responses only —")] + [(n, n) for n in sorted(baselines)]

    def params(self) -> dict:
        data = {k: v for k, v in self.cleaned_data.items() if v not in (None, "")}
        return data


class RewardForm(forms.Form):
    base_model = forms.ChoiceField(label="Backbone")
    epochs = forms.FloatField(min_value=0.1, max_value=100, initial=1.0)
    learning_rate = forms.FloatField(min_value=1e-7, max_value=1.0, initial=1e-4, label="Learning rate")
    aggregation = forms.ChoiceField(choices=[("all", "keep every labeler's pairs"), ("majority", "majority per pair")])
    use_lora = forms.BooleanField(required=False, initial=True, label="LoRA (off: full fine-tuning)")

    def __init__(self, *args, campaign, **kwargs):
        super().__init__(*args, **kwargs)
        self.campaign = campaign
        self.base_models = generatable_models(campaign)
        _choice_field(self, "base_model").choices = [(n, n) for n in self.base_models]

    def params(self) -> dict:
        return dict(self.cleaned_data)

    def memory_line(self, kind: str = "reward") -> str:
        """The memory estimate of a run with this form's first choices, against the live workers (annotate.runs.fit)."""
        reward = {"base_model": self.base_models[0], "use_lora": True}
        return fit_summary(kind, self.campaign, reward if kind == "reward" else {"method": "ppo", "reward": reward, "policy": {}})


def _choice_field(form: forms.Form, name: str) -> forms.ChoiceField:
    """The form's choice field `name`, typed as one (the choices are filled in per campaign)."""
    field = form.fields[name]
    assert isinstance(field, forms.ChoiceField)
    return field
